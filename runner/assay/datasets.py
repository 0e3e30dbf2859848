"""Building datasets from a dataset.yaml, and listing them in a store.

dataset.yaml keeps the fields of Starwhale's (name, data_dir, data_filter, label_filter, process, desc,
tag, attr.volume_size). ``process`` names the source that yields samples: a built-in (``pennfudan``,
``coco``, ``imagefolder``, ``yolo``; see docs/formats.md) or a user class ``"module:Class"`` imported
from the dataset.yaml's folder. A source is constructed as ``Class(data_dir, data_files, label_files)``
and iterated for ``assay.shards.Sample`` objects, and has a ``label_schema`` attribute.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assay import storage
from assay.config_files import read_mapping
from assay.errors import AssayError, SpecError
from assay.layout import LATEST, MANIFEST
from assay.shards import DatasetManifest, Sample, ShardInfo, ShardWriter, load_manifest
from assay.versions import load_versions

BUILTIN_SOURCES = {
    "pennfudan": "assay.sources.pennfudan:PennFudanSource",
    "coco": "assay.sources.coco:CocoSource",
    "imagefolder": "assay.sources.imagefolder:ImageFolderSource",
    "yolo": "assay.sources.yolo:YoloSource",
}
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_EXT = re.compile(r"[a-z0-9]+(\.[a-z0-9]+)*")


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    data_dir: Path
    data_filter: str
    label_filter: str | None
    process: str
    desc: str = ""
    tag: list[str] = field(default_factory=list)
    volume_size: int = 64 << 20
    base_dir: Path = Path(".")


def parse_size(text: str | int) -> int:
    """'8M', '64MB', '1.5G', '4096' -> bytes."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise SpecError(f"attr.volume_size {text!r} is not a size", "write e.g. 8M, 64MB or 1G")
    if isinstance(text, int):
        if text <= 0:
            raise SpecError(f"attr.volume_size {text!r} is not a positive size (a whole number of bytes)",
                            "write e.g. 8M, 64MB or 1G")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not m:
        raise SpecError(f"attr.volume_size {text!r} is not a size", "write e.g. 8M, 64MB or 1G")
    size = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if size < 1 or (not m.group(2) and size != int(size)):
        raise SpecError(f"attr.volume_size {text!r} is not a positive size (a whole number of bytes)",
                        "write e.g. 8M, 64MB or 1G")
    return int(size)


def load_config(path: str | Path) -> DatasetConfig:
    path = Path(path)
    doc = read_mapping(path, "dataset.yaml", "name, data_dir, data_filter, process",
                       {"name", "data_dir", "data_filter", "label_filter", "process", "desc", "tag", "attr",
                        "pip_req"})
    for req in ("name", "data_dir", "data_filter", "process"):
        if not doc.get(req):
            raise SpecError(f"{path}: field {req!r} is required")
    name = str(doc["name"])
    if not _NAME.fullmatch(name):
        raise SpecError(f"{path}: name {name!r} is not valid", "use lowercase letters, digits, '.', '_' and '-'")
    base = path.parent.resolve()
    data_dir = (base / str(doc["data_dir"])).resolve()
    attr = doc.get("attr") or {}
    if not isinstance(attr, dict):
        raise SpecError(f"{path}: attr must be a mapping (e.g. volume_size: 8M)")
    tag = doc.get("tag") or []
    try:
        volume_size = parse_size(attr.get("volume_size", "64M"))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc.message}", exc.hint) from None
    return DatasetConfig(name=name, data_dir=data_dir, data_filter=str(doc["data_filter"]),
                         label_filter=doc.get("label_filter"), process=str(doc["process"]),
                         desc=str(doc.get("desc") or ""), tag=[str(t) for t in tag],
                         volume_size=volume_size, base_dir=base)


def load_source(config: DatasetConfig, data_dir: Path | None = None):
    """Instantiate the sample source named by ``process`` over the filtered files."""
    data_dir = Path(data_dir or config.data_dir)
    if not data_dir.is_dir():
        raise SpecError(f"data_dir {data_dir} does not exist", "fix data_dir in dataset.yaml or pass --data-dir")
    for field_name, pattern in (("data_filter", config.data_filter), ("label_filter", config.label_filter)):
        if pattern and (Path(pattern).is_absolute() or ".." in Path(pattern).parts):
            raise SpecError(f"{field_name} {pattern!r} must be relative to data_dir",
                            f"e.g. {field_name}: 'PNGImages/*.png'; set data_dir to the folder instead")
    data_files = _selected(data_dir, "data_filter", config.data_filter)
    label_files = _selected(data_dir, "label_filter", config.label_filter) if config.label_filter else []
    if not data_files:
        raise SpecError(f"data_filter {config.data_filter!r} matches no file under {data_dir}")
    if ":" not in config.process and config.process not in BUILTIN_SOURCES:
        close = difflib.get_close_matches(config.process, BUILTIN_SOURCES, n=1, cutoff=0.6)
        raise SpecError(f"process {config.process!r} is neither a built-in source"
                        + (f" (did you mean {close[0]}?)" if close else "") + " nor 'module:Class'",
                        f"use one of {', '.join(sorted(BUILTIN_SOURCES))}, or module:Class for your own source")
    target = BUILTIN_SOURCES.get(config.process, config.process)
    cls = import_object(target, config.base_dir, "process")
    return cls(data_dir, data_files, label_files)


def _selected(data_dir: Path, field_name: str, pattern: str) -> list[Path]:
    """What ``pattern`` selects under ``data_dir``, refusing what no source can read as a file.

    Reading a FIFO blocks forever and a device never ends, so any entry that is neither a regular file
    nor a folder (a ``**/*`` filter matches folders; sources skip them) is refused by name, as is a
    dangling symlink: dropping it would quietly build a smaller dataset.
    """
    paths = sorted(data_dir.glob(pattern))
    bad = []
    for path in paths:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            bad.append(f"{path} (a symlink to the missing {os.path.realpath(path)})")
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            bad.append(f"{path} ({_KINDS.get(stat.S_IFMT(mode), 'not a regular file')})")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise SpecError(f"{field_name} {pattern!r} selects {_count(len(bad))} that {'is' if len(bad) == 1 else 'are'} not a readable file: "
                        + ", ".join(bad[:3]) + more,
                        f"remove or replace them, or narrow {field_name}: a source reads only regular files")
    return paths


def _count(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


def import_object(target: str, base_dir: Path, what: str):
    """Import ``module:attr``, looking in ``base_dir`` first (user code next to its yaml)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SpecError(f"{what} {target!r} is not of the form 'module:Class'")
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    loaded = sys.modules.get(module_name)
    local = Path(base_dir, *module_name.split("."))
    if loaded is not None and (local.with_suffix(".py").is_file() or (local / "__init__.py").is_file()) \
            and Path(getattr(loaded, "__file__", "") or "/").resolve() not in (
                local.with_suffix(".py").resolve(), (local / "__init__.py").resolve()):
        del sys.modules[module_name]  # a same-named module of another yaml's folder: import this one
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"{what}: cannot import module {module_name!r} ({exc})",
                        f"put {module_name.replace('.', '/')}.py next to the yaml file, or install it") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise SpecError(f"{what}: module {module_name!r} has no {attr!r}") from exc


def build(config: DatasetConfig, store: str, data_dir: Path | None = None,
          log: Callable[[str], None] = print) -> DatasetManifest:
    """Write the dataset's shards, labels and manifest under ``<store>/datasets/<name>/<version>``.

    Shards are staged on local disk (streamed, never held in memory), the version is the digest of
    their content, and uploads skip objects that already exist with the same digest (a rerun resumes).
    """
    source = load_source(config, data_dir)
    label_schema = getattr(source, "label_schema", {}) or {}
    if not isinstance(label_schema, dict):
        raise SpecError(f"the dataset source {config.process!r}: label_schema is a {type(label_schema).__name__} "
                        f"({str(label_schema)[:80]}), not a mapping",
                        "set label_schema to a dict, e.g. {'classes': [...]} or {'categories': [{'id': 1, "
                        "'name': ...}]}")
    label_schema = dict(label_schema)
    storage.clean_leftovers(store, "datasets", config.name)
    with storage.scratch_dir("dataset", store) as staging:
        shards, seen = [], set()
        writer: ShardWriter | None = None
        position = 0
        for sample in _source_errors_named(_prefetched(source), config.process):
            _check_sample(sample, seen)
            if writer is None:
                writer = ShardWriter(staging, len(shards), position)
            writer.add(position, sample)
            position += 1
            if writer.size >= config.volume_size:
                shards.append(writer.close())
                writer = None
        if writer is not None:
            shards.append(writer.close())
        if not shards:
            raise SpecError(f"source {config.process!r} yielded no samples")
        version = content_version(config.name, label_schema, shards)
        manifest = DatasetManifest(name=config.name, version=version, samples=position,
                                   label_schema=label_schema, shards=shards, desc=config.desc, tag=config.tag,
                                   uri=storage.join(store, "datasets", config.name, version))
        _upload(manifest, staging, log)
    return manifest


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _prefetched(source: Iterable[Sample], depth: int = 8) -> Iterator[Sample]:
    """Iterate ``source`` in a background thread: reading and labelling the next samples (PNG decoding
    releases the GIL) overlaps with writing and hashing the shard. Errors surface in the caller."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(_Failure(exc))

    thread = threading.Thread(target=produce, name="assay-dataset-source", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()


def _source_errors_named(samples: Iterable[Sample], process: str) -> Iterator[Sample]:
    """A failure inside the user's source code becomes an error that names the source."""
    try:
        yield from samples
    except AssayError:
        raise
    except Exception as exc:
        raise SpecError(f"the dataset source {process!r} failed: {exc!r}",
                        "fix the source (ASSAY_DEBUG=1 shows the traceback), then build again") from exc


def _check_sample(sample: Sample, seen: set[str]) -> None:
    if not isinstance(sample, Sample):
        raise SpecError(f"the dataset source yielded {type(sample).__name__}, expected assay.shards.Sample")
    if not sample.id or not isinstance(sample.id, str):
        raise SpecError("a sample has no id", "give every Sample a stable string id (e.g. the file stem)")
    if sample.id in seen:
        raise SpecError(f"sample id {sample.id!r} occurs twice", "sample ids must be unique within a dataset")
    seen.add(sample.id)
    if not isinstance(sample.files, dict):
        raise SpecError(f"sample {sample.id!r}: files is a {type(sample.files).__name__}, not a mapping",
                        "give Sample(files=...) a dict of extension -> bytes, e.g. {'png': path.read_bytes()}")
    for ext, data in sample.files.items():
        if not isinstance(ext, str) or not _EXT.fullmatch(ext) or ext == "json":
            raise SpecError(f"sample {sample.id!r}: file extension {ext!r} is not allowed",
                            "use lowercase extensions such as 'png' or 'mask.png' ('json' is reserved)")
        if not isinstance(data, bytes | bytearray):
            raise SpecError(f"sample {sample.id!r}: files[{ext!r}] is a {type(data).__name__}, not bytes",
                            "give the file's content as bytes, e.g. path.read_bytes() (not the path or text)")
    try:
        json.dumps(sample.label, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"sample {sample.id!r}: its label is not plain JSON ({exc})",
                        "labels hold dicts, lists, str, int, float and bool: convert numpy values with "
                        ".item() or .tolist(), and give no NaN or infinity") from exc


def content_version(name: str, label_schema: dict[str, Any], shards: Sequence[ShardInfo]) -> str:
    doc = {"name": name, "label_schema": label_schema,
           "shards": [[s.sha256, s.labels_sha256, s.samples] for s in shards]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _upload(manifest: DatasetManifest, staging: Path, log: Callable[[str], None]) -> None:
    existing = set(storage.list_names(manifest.uri))
    for shard in manifest.shards:
        for suffix in (".tar", ".labels.json"):
            name = shard.name + suffix
            if name in existing and storage.size(storage.join(manifest.uri, name)) == (staging / name).stat().st_size:
                continue  # same version means same content: already uploaded by an earlier run
            storage.upload(staging / name, storage.join(manifest.uri, name), move=True)
        log(f"  {shard.name}: {shard.samples} samples, {shard.bytes / 1e6:.1f} MB")
    # the manifest is the commit point: written only after every shard is in place
    storage.write_text(storage.join(manifest.uri, MANIFEST), manifest.to_json())
    storage.write_text(storage.join(store_name_folder(manifest.uri), LATEST), manifest.version)


def store_name_folder(version_uri: str) -> str:
    """``<store>/datasets/<name>/<version>`` -> ``<store>/datasets/<name>``."""
    return version_uri.rstrip("/").rsplit("/", 1)[0]


def list_datasets(store: str, damaged: list[AssayError] | None = None) -> list[DatasetManifest]:
    """Every complete dataset version under ``<store>/datasets``; with ``damaged``, see ``versions.load_versions``."""
    return load_versions(store, "datasets", load_manifest, damaged)
