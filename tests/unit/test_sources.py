"""PennFudanPed: the source, and the demo's download path (tested with a local zip), safe unzip and
synthetic stand-in."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from assay import datasets
from assay.errors import IntegrityError, UnsafeArchiveError
from assay.sources import pennfudan
from tests.conftest import example_module, real_pennfudan, write_dataset_yaml

pennfudan_data = example_module("pennfudan_data")


def _zip_of(root: Path, path: Path, drop: str | None = None, extra: dict | None = None) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(root.rglob("*")):
            rel = f.relative_to(root.parent).as_posix()
            if f.is_file() and rel != f"PennFudanPed/{drop}":
                zf.write(f, rel)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path.as_uri()


@pytest.fixture
def known_tree(pennfudan_dir, monkeypatch):
    """The known digest is the real set's; the synthetic stand-in is made the known tree instead."""
    if real_pennfudan():
        assert pennfudan_data.tree_digest(pennfudan_dir) == pennfudan_data.TREE_SHA256
    else:
        monkeypatch.setattr(pennfudan_data, "TREE_SHA256", pennfudan_data.tree_digest(pennfudan_dir))
    return pennfudan_dir


def test_download_checks_every_file(known_tree, tmp_path):
    url = _zip_of(known_tree, tmp_path / "PennFudanPed.zip")
    got = pennfudan_data.download(tmp_path / "cache", url=url)
    assert pennfudan_data.tree_digest(got) == pennfudan_data.TREE_SHA256
    assert len(list((got / "PNGImages").glob("*.png"))) == 170


def test_download_with_a_changed_file_is_refused(known_tree, tmp_path):
    pennfudan_dir = known_tree
    url = _zip_of(pennfudan_dir, tmp_path / "bad.zip", drop="PedMasks/FudanPed00001_mask.png")
    with pytest.raises(IntegrityError, match="does not match the known PennFudanPed files"):
        pennfudan_data.download(tmp_path / "cache", url=url)
    assert not (tmp_path / "cache" / "PennFudanPed").exists()


def test_zip_members_escaping_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.txt", b"x")
    with pytest.raises(UnsafeArchiveError, match="escape"):
        pennfudan_data._safe_unzip(buf.getvalue(), tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("PennFudanPed/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        pennfudan_data._safe_unzip(buf.getvalue(), tmp_path / "out")


def test_synthetic_set_builds_with_the_seed_filters(tmp_path):
    root = pennfudan_data.synthesize(tmp_path, count=20)
    cfg = datasets.load_config(write_dataset_yaml(tmp_path, root, name="synthetic"))
    m = datasets.build(cfg, str(tmp_path / "store"), log=lambda s: None)
    assert m.samples == 2  # SynthPed00006 and SynthPed00016
    assert pennfudan_data.is_pennfudan(root)


def test_labels_match_the_annotation_boxes(pennfudan_dir):
    """Mask-derived boxes agree with the PASCAL annotation (1-based, inclusive) to within 3 px (6 for one)."""
    import re

    for name in ["FudanPed00001", "PennPed00016", "PennPed00096"]:
        label = pennfudan.read_label((pennfudan_dir / "PedMasks" / f"{name}_mask.png").read_bytes())
        text = (pennfudan_dir / "Annotation" / f"{name}.txt").read_text()
        boxes = [tuple(map(int, m)) for m in re.findall(r"\((\d+), (\d+)\) - \((\d+), (\d+)\)", text)]
        assert len(boxes) == len(label["objects"])
        for obj, (x1, y1, x2, y2) in zip(label["objects"], boxes, strict=True):
            x, y, w, h = obj["bbox"]
            assert abs(x - (x1 - 1)) <= 3 and abs(x + w - x2) <= 3 and abs(y - (y1 - 1)) <= 3
            assert abs(y + h - y2) <= 3
