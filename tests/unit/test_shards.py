"""Dataset build and shard reading: determinism, the 17-image split, verification, unsafe archives."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from assay import archive, datasets, shards
from assay.errors import IntegrityError, ObjectNotFound, SpecError, UnsafeArchiveError
from tests.conftest import write_dataset_yaml


def test_seed_filters_select_the_17_image_test_split(test_split):
    assert test_split.samples == 17
    assert len(test_split.shards) == 3
    assert sum(s.samples for s in test_split.shards) == 17
    ids = [r["id"] for i in range(3) for r in shards.read_labels(test_split, i)]
    assert len(set(ids)) == 17 and all(i.endswith("6") for i in ids)


def test_same_inputs_give_same_version(pennfudan_dir, tmp_path, test_split):
    cfg = datasets.load_config(write_dataset_yaml(tmp_path, pennfudan_dir))
    again = datasets.build(cfg, str(tmp_path / "other-store"), log=lambda s: None)
    assert again.version == test_split.version
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in test_split.shards]


def test_latest_resolves_and_manifest_lists_digests(test_split, store):
    m = shards.load_manifest(f"{store}/datasets/pennfudan")
    assert m.version == test_split.version
    assert all(len(s.sha256) == 64 for s in m.shards)
    assert m.label_schema["categories"] == [{"id": 1, "name": "pedestrian"}]


def test_samples_round_trip_with_labels(test_split):
    with shards.fetch_shard(test_split, 0) as path:
        samples = list(shards.iter_shard_samples(path, "shard0"))
    assert len(samples) == test_split.shards[0].samples
    s = samples[0]
    assert set(s.files) == {"png", "mask.png"}
    assert s.files["png"][:8] == b"\x89PNG\r\n\x1a\n"
    obj = s.label["objects"][0]
    assert obj["category_id"] == 1 and obj["segmentation"]["counts"]


def test_webdataset_member_names(test_split):
    with tarfile.open(Path(test_split.uri) / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000.json", "000000.mask.png", "000000.png"] or names[0].startswith("000000.")
    assert all(n.split(".", 1)[0].isdigit() for n in names)


def test_corrupt_shard_is_refused(test_split, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(test_split.uri, copy)
    m = shards.load_manifest(str(copy))
    data = bytearray((copy / "shard-000001.tar").read_bytes())
    data[1000] ^= 0xFF
    (copy / "shard-000001.tar").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 does not match"), shards.fetch_shard(m, 1):
        pass
    (copy / "shard-000002.tar").write_bytes(bytes(data[:5000]))
    with pytest.raises(IntegrityError, match="truncated"), shards.fetch_shard(m, 2):
        pass


def _tar_with(members: list[tarfile.TarInfo], path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil", "000001/../../x.png"])
def test_tar_members_escaping_are_refused(tmp_path, name):
    info = tarfile.TarInfo(name)
    info.size = 1
    path = _tar_with([info], tmp_path / "evil.tar")
    with pytest.raises(UnsafeArchiveError, match="escape"):
        archive.extract_all(path, tmp_path / "dest", "evil.tar")
    with pytest.raises(UnsafeArchiveError):
        list(shards.iter_shard_samples(path, "evil.tar"))
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_links_and_devices_are_refused(tmp_path, kind):
    info = tarfile.TarInfo("000000.png")
    info.type = kind
    info.linkname = "/etc/passwd"
    path = _tar_with([info], tmp_path / "link.tar")
    with pytest.raises(UnsafeArchiveError, match="not a regular file"):
        archive.extract_all(path, tmp_path / "dest", "link.tar")
    assert not (tmp_path / "dest" / "000000.png").exists()




def test_missing_dataset_names_the_uri(tmp_path):
    with pytest.raises(ObjectNotFound, match=str(tmp_path)):
        shards.load_manifest(str(tmp_path / "nope"))


@pytest.mark.parametrize("text,message", [
    ("name: x\n", "field 'data_dir' is required"),
    ("name: Bad Name\ndata_dir: .\ndata_filter: '*'\nprocess: pennfudan\n", "not valid"),
    ("name: x\ndata_dir: .\ndata_filter: '*'\nprocess: pennfudan\nbogus: 1\n", "unknown field 'bogus'"),
    ("name: x\ndata_dir: .\ndata_filter: '*'\nprocess: p\nattr: {volume_size: lots}\n", "not a size"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_dataset_yaml(tmp_path, text, message):
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(SpecError, match=message):
        datasets.load_config(tmp_path / "dataset.yaml")


def test_filter_matching_nothing(tmp_path, pennfudan_dir):
    cfg = datasets.load_config(write_dataset_yaml(tmp_path, pennfudan_dir, data_filter="PNGImages/*.jpg"))
    with pytest.raises(SpecError, match="matches no file"):
        datasets.build(cfg, str(tmp_path / "s"))
    assert not (tmp_path / "s").exists(), "nothing half-written is left behind"


def test_volume_size_parsing():
    assert datasets.parse_size("8M") == 8 << 20
    assert datasets.parse_size("64MB") == 64 << 20
    assert datasets.parse_size("1G") == 1 << 30
    assert datasets.parse_size(4096) == 4096


def test_manifest_json_is_plain_json(test_split):
    doc = json.loads((Path(test_split.uri) / "manifest.json").read_text())
    assert doc["format"] == "assay.dataset/v1" and doc["samples"] == 17


def test_sample_image_is_found_by_extension_and_missing_one_is_named():
    from assay.errors import IntegrityError
    from assay.shards import Sample

    assert Sample("a", {"mask.png": b"m", "jpg": b"j"}).image() == ("jpg", b"j")
    assert Sample("a", {"png": b"p", "mask.png": b"m"}).image() == ("png", b"p")
    with pytest.raises(IntegrityError, match="sample 'b' has no image file.*txt"):
        Sample("b", {"txt": b""}).image()
    assert Sample("b", {"txt": b""}).image_or_none() is None
    assert Sample("a", {"png": b"p"}).image_or_none() == ("png", b"p")
