"""Model packages: build, verify, unpack; tampering and missing weights are refused."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from assay import packages
from assay.errors import HandlerError, IntegrityError, SpecError
from tests.conftest import FIXTURES


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURES / "oracle", tmp_path / "pkg")
    return tmp_path / "pkg"


def test_build_is_deterministic_and_versioned(tmp_path, oracle_model):
    pkg = _copy_package(tmp_path)
    again = packages.build(packages.load_config(pkg / "model.yaml"), str(tmp_path / "s"), log=lambda s: None)
    assert again.version == oracle_model.version
    assert {f["path"] for f in again.files} == {"handler.py", "model.yaml"}


def test_unpack_verifies_and_loads_handler(oracle_model, tmp_path):
    folder = packages.unpack(oracle_model, tmp_path / "cache")
    assert (folder / "handler.py").is_file() and (folder / ".verified").is_file()
    cls = packages.load_handler_class(oracle_model, folder)
    assert cls.__name__ == "OracleHandler"


def test_tampered_package_is_refused(tmp_path):
    pkg = _copy_package(tmp_path)
    m = packages.build(packages.load_config(pkg / "model.yaml"), str(tmp_path / "s"), log=lambda s: None)
    tar_path = Path(m.uri) / "package.tar"
    data = bytearray(tar_path.read_bytes())
    data[600] ^= 0x01
    tar_path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="digest does not match"):
        packages.unpack(m, tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / m.name / m.version).exists()


def test_manifest_that_disagrees_with_files_is_refused(tmp_path):
    pkg = _copy_package(tmp_path)
    m = packages.build(packages.load_config(pkg / "model.yaml"), str(tmp_path / "s"), log=lambda s: None)
    doc = json.loads((Path(m.uri) / "manifest.json").read_text())
    doc["files"][0]["sha256"] = "0" * 64
    (Path(m.uri) / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        packages.unpack(packages.load_manifest(m.uri), tmp_path / "cache")


def test_missing_weight_file_is_named(tmp_path):
    pkg = _copy_package(tmp_path)
    (pkg / "model.yaml").write_text((pkg / "model.yaml").read_text().replace("model: []", "model: [w.pt]"))
    with pytest.raises(SpecError, match="weight file 'w.pt'"):
        packages.build(packages.load_config(pkg / "model.yaml"), str(tmp_path / "s"))


def test_seed_run_ppl_name_is_accepted(tmp_path):
    pkg = _copy_package(tmp_path)
    (pkg / "model.yaml").write_text("name: seed\nrun:\n  ppl: handler:OracleHandler\n")
    assert packages.load_config(pkg / "model.yaml").handler == "handler:OracleHandler"


@pytest.mark.parametrize("text,message", [
    ("name: x\n", "run.handler is missing"),
    ("name: x\nrun: {handler: h:H, evaluator: bleu}\n", "run.evaluator 'bleu' is unknown"),
    ("name: X Y\nrun: {handler: h:H}\n", "not valid"),
    ("name: x\nrun: {handler: h:H}\nextra: 1\n", "unknown field 'extra'"),
])
def test_bad_model_yaml(tmp_path, text, message):
    (tmp_path / "model.yaml").write_text(text)
    with pytest.raises(SpecError, match=message):
        packages.load_config(tmp_path / "model.yaml")


def test_handler_that_is_not_a_handler(tmp_path):
    pkg = _copy_package(tmp_path)
    (pkg / "model.yaml").write_text("name: notahandler\ncode: ['*.py']\nrun: {handler: handler:np}\n")
    m = packages.build(packages.load_config(pkg / "model.yaml"), str(tmp_path / "s"), log=lambda s: None)
    with pytest.raises(HandlerError, match="not a subclass"):
        packages.load_handler_class(m, packages.unpack(m, tmp_path / "cache"))


def test_package_tar_holds_only_regular_files(oracle_model):
    with tarfile.open(Path(oracle_model.uri) / "package.tar") as tar:
        assert all(m.isreg() and m.mtime == 0 for m in tar.getmembers())
