"""The dataset format: tar shards in WebDataset naming, per-shard label files, and the manifest.

    <dataset>/<version>/manifest.json              name, version, counts, label schema, every shard's digests
    <dataset>/<version>/shard-000000.tar           000000.png, 000000.mask.png, 000000.json, 000001.png, ...
    <dataset>/<version>/shard-000000.labels.json   {"samples": [{"id": ..., "label": {...}}, ...]}
    <dataset>/LATEST                               the newest version's folder name

A sample's key inside a tar is its position in the dataset (six digits); its stable ``id`` (e.g. the file
stem ``FudanPed00016``) is in ``<key>.json`` and in the labels file and travels unchanged to the metrics.
Label files exist so that cmp reads ground truth without downloading or decoding any image.
The manifest is written last: a dataset folder without one is incomplete and never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from assay import archive, storage
from assay.errors import IntegrityError
from assay.layout import MANIFEST
from assay.versions import resolve_version

FORMAT = "assay.dataset/v1"
#: File extensions that hold a sample's image, in the order ``Sample.image`` looks for them.
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")


@dataclass(frozen=True)
class Sample:
    """One example: a stable id, its files by extension (``png``, ``mask.png``), and its label."""

    id: str
    files: dict[str, bytes]
    label: dict[str, Any] = field(default_factory=dict)

    def image(self) -> tuple[str, bytes]:
        """The sample's image as (extension, bytes): the first of ``IMAGE_EXTENSIONS`` it has.

        Sources name an image file by its format (``png``, ``jpg``); built-in handlers and ``assay
        report`` find it here, so they work with every source that follows that convention.
        """
        found = self.image_or_none()
        if found is not None:
            return found
        raise IntegrityError(f"sample {self.id!r} has no image file (its files: {sorted(self.files)})",
                             f"a source must store the image under one of: {', '.join(IMAGE_EXTENSIONS)}")

    def image_or_none(self) -> tuple[str, bytes] | None:
        """``image()``, or None for a sample with no image file (a dataset of arrays or text)."""
        ext = next((e for e in IMAGE_EXTENSIONS if e in self.files), None)
        return None if ext is None else (ext, self.files[ext])


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str
    labels_sha256: str
    first: int  # position of the shard's first sample in the dataset


@dataclass(frozen=True)
class DatasetManifest:
    name: str
    version: str
    samples: int
    label_schema: dict[str, Any]
    shards: list[ShardInfo]
    desc: str = ""
    tag: list[str] = field(default_factory=list)
    uri: str = ""  # where it was read from (not stored)

    def to_json(self) -> str:
        doc = {"format": FORMAT, **asdict(self)}
        doc.pop("uri")
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, uri: str) -> DatasetManifest:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
            shards = [ShardInfo(**s) for s in doc["shards"]]
            return cls(name=doc["name"], version=doc["version"], samples=int(doc["samples"]),
                       label_schema=doc["label_schema"], shards=shards, desc=doc.get("desc", ""),
                       tag=list(doc.get("tag", [])), uri=uri)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"{uri}: not a valid dataset manifest ({exc})",
                                 "rebuild the dataset with `assay dataset build`") from exc

    def shard_uri(self, index: int) -> str:
        return storage.join(self.uri, f"{self.shards[index].name}.tar")

    def labels_uri(self, index: int) -> str:
        return storage.join(self.uri, f"{self.shards[index].name}.labels.json")


def load_manifest(uri: str) -> DatasetManifest:
    folder = resolve_version(uri, "dataset", "build one with `assay dataset build dataset.yaml --store STORE`, "
                             "or list them with `assay dataset list --store STORE`")
    return DatasetManifest.from_json(storage.read_bytes(storage.join(folder, MANIFEST)), folder)


def read_labels(manifest: DatasetManifest, index: int) -> list[dict[str, Any]]:
    """The ``[{"id", "label"}]`` records of shard ``index``, checked against the manifest's digest."""
    import hashlib

    uri = manifest.labels_uri(index)
    data = storage.read_bytes(uri)
    if hashlib.sha256(data).hexdigest() != manifest.shards[index].labels_sha256:
        raise IntegrityError(f"{uri}: sha256 does not match the manifest", "the dataset is corrupt; rebuild it")
    records = json.loads(data)["samples"]
    if len(records) != manifest.shards[index].samples:
        raise IntegrityError(f"{uri}: {len(records)} samples, manifest says {manifest.shards[index].samples}")
    return records


@contextlib.contextmanager
def fetch_shard(manifest: DatasetManifest, index: int, workdir: str | None = None) -> Iterator[Path]:
    """Download shard ``index`` to a temp file, verify size and sha256, yield its path, then delete it."""
    info = manifest.shards[index]
    uri = manifest.shard_uri(index)
    with storage.scratch_dir("shard") if workdir is None else tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / f"{info.name}.tar"
        storage.download(uri, path)
        got_size = path.stat().st_size
        if got_size != info.bytes:
            raise IntegrityError(f"{uri}: {got_size} bytes, manifest says {info.bytes} (truncated?)",
                                 "the shard is corrupt; rebuild the dataset")
        if archive.sha256_file(path) != info.sha256:
            raise IntegrityError(f"{uri}: sha256 does not match the manifest",
                                 "the shard is corrupt; rebuild the dataset")
        yield path


def iter_shard_samples(path: Path, uri: str) -> Iterator[Sample]:
    """Samples of a verified shard file, in order: members are grouped by key (the part before the first dot)."""
    key, files, meta = None, {}, None

    def finish() -> Sample:
        if not isinstance(meta, dict) or not isinstance(meta.get("id"), str) or not isinstance(
                meta.get("label", {}), dict):
            raise IntegrityError(f"{uri}: sample {key} has no valid {key}.json (an object with a string id)")
        return Sample(id=meta["id"], files=files, label=meta.get("label", {}))

    for name, data in archive.iter_members(path, uri):
        if "/" in name or "." not in name:
            raise IntegrityError(f"{uri}: member {name!r} does not follow the KEY.EXT naming")
        k, ext = name.split(".", 1)
        if k != key:
            if key is not None:
                yield finish()
            key, files, meta = k, {}, None
        if ext == "json":
            try:
                meta = json.loads(data)
            except ValueError as exc:
                raise IntegrityError(f"{uri}: {name} is not valid JSON ({exc})") from exc
        else:
            files[ext] = data
    if key is not None:
        yield finish()


class ShardWriter:
    """Writes one shard's tar and labels file into a local staging folder, deterministically."""

    def __init__(self, folder: Path, index: int, first: int):
        from assay.layout import shard_name

        self.name = shard_name(index)
        self.first = first
        self.tar_path = folder / f"{self.name}.tar"
        self.labels_path = folder / f"{self.name}.labels.json"
        self._file = _HashingWriter(open(self.tar_path, "wb"))  # noqa: SIM115 - closed by close()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - as above
        self._labels: list[dict[str, Any]] = []

    @property
    def size(self) -> int:
        return self._tar.offset

    def add(self, position: int, sample: Sample) -> None:
        key = f"{position:06d}"
        for ext in sorted(sample.files):
            archive.add_bytes(self._tar, f"{key}.{ext}", sample.files[ext])
        meta = {"id": sample.id, "label": sample.label}
        archive.add_bytes(self._tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self._labels.append(meta)

    def close(self) -> ShardInfo:
        self._tar.close()
        self._file.close()
        labels = json.dumps({"samples": self._labels}, sort_keys=True).encode()
        self.labels_path.write_bytes(labels)
        return ShardInfo(name=self.name, samples=len(self._labels), bytes=self._file.size,
                         sha256=self._file.hash.hexdigest(), labels_sha256=hashlib.sha256(labels).hexdigest(),
                         first=self.first)


class _HashingWriter:
    """A write-only file that hashes what passes through it (no second read of the shard to digest it)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.hash, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self.raw.close()
