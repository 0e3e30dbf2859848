"""Corrupt or inconsistent inputs: each gives a clear error naming the object and the documented
non-retryable exit code (3), so the operator fails the job at once instead of burning retries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from assay import packages
from assay.errors import EXIT_PERMANENT
from assay.spec import RunContext
from tests.conftest import FIXTURES


def _runner(role: str, ctx: RunContext, **env) -> tuple[int, str]:
    # a fresh package cache: a verified cached copy would (rightly) be used instead of the tampered store
    cache = Path(ctx.output_uri).parent / "cache"
    full = {**os.environ, **ctx.to_env(), "JOB_COMPLETION_INDEX": str(ctx.worker_index),
            "ASSAY_CACHE_DIR": str(cache), **env}
    proc = subprocess.run([sys.executable, "-m", "assay.runner", role], env=full, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def dataset_copy(test_split, tmp_path) -> Path:
    copy = tmp_path / "dataset"
    shutil.copytree(test_split.uri, copy)
    return copy


def _ctx(model_uri: str, dataset_uri: str, tmp_path: Path) -> RunContext:
    return RunContext(job_name="bad", model_uri=model_uri, dataset_uri=dataset_uri,
                      output_uri=str(tmp_path / "out"), device="cpu")


def test_corrupt_shard(dataset_copy, oracle_model, tmp_path):
    shard = dataset_copy / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x55
    shard.write_bytes(bytes(data))
    code, log = _runner("ppl", _ctx(oracle_model.uri, str(dataset_copy), tmp_path))
    assert code == EXIT_PERMANENT
    assert f"{shard}: sha256 does not match the manifest" in log


def test_truncated_shard(dataset_copy, oracle_model, tmp_path):
    shard = dataset_copy / "shard-000002.tar"
    shard.write_bytes(shard.read_bytes()[:4096])
    code, log = _runner("ppl", _ctx(oracle_model.uri, str(dataset_copy), tmp_path))
    assert code == EXIT_PERMANENT
    assert f"{shard}: 4096 bytes, manifest says" in log and "truncated" in log


def test_manifest_that_disagrees_with_its_shards(dataset_copy, oracle_model, tmp_path):
    manifest = json.loads((dataset_copy / "manifest.json").read_text())
    manifest["shards"][0]["samples"] += 1  # the manifest claims a sample the shard does not hold
    (dataset_copy / "manifest.json").write_text(json.dumps(manifest))
    code, log = _runner("ppl", _ctx(oracle_model.uri, str(dataset_copy), tmp_path))
    assert code == EXIT_PERMANENT
    assert "shard 0: read 6 samples" in log and "manifest says 7" in log


def test_unreadable_manifest(dataset_copy, oracle_model, tmp_path):
    (dataset_copy / "manifest.json").write_text("{not json")
    code, log = _runner("ppl", _ctx(oracle_model.uri, str(dataset_copy), tmp_path))
    assert code == EXIT_PERMANENT
    assert f"{dataset_copy}: not a valid dataset manifest" in log


def test_corrupt_labels_stop_cmp(dataset_copy, oracle_model, tmp_path):
    ctx = _ctx(oracle_model.uri, str(dataset_copy), tmp_path)
    assert _runner("ppl", ctx)[0] == 0
    labels = dataset_copy / "shard-000000.labels.json"
    labels.write_text(labels.read_text().replace("FudanPed00006", "FudanPed00007"))
    code, log = _runner("cmp", ctx)
    assert code == EXIT_PERMANENT
    assert f"{labels}: sha256 does not match the manifest" in log


def test_package_digest_mismatch(oracle_model, test_split, tmp_path):
    pkg = tmp_path / "models"
    shutil.copytree(oracle_model.uri, pkg)
    with tarfile.open(pkg / "package.tar", "a") as tar:  # a file slipped into the package afterwards
        info = tarfile.TarInfo("extra.py")
        tar.addfile(info)
    code, log = _runner("ppl", _ctx(str(pkg), test_split.uri, tmp_path))
    assert code == EXIT_PERMANENT
    assert f"{pkg / 'package.tar'}: digest does not match its manifest" in log


def test_weight_file_missing_from_package(test_split, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "oracle", src)
    (src / "weights.pt").write_bytes(b"0" * 100)
    (src / "model.yaml").write_text((src / "model.yaml").read_text().replace("model: []", "model: [weights.pt]"))
    m = packages.build(packages.load_config(src / "model.yaml"), str(tmp_path / "s"), log=lambda s: None)
    # rebuild the tar without the weight file but keep the manifest (a broken upload or a hand edit)
    tar_path = Path(m.uri) / "package.tar"
    with tarfile.open(tar_path) as tar:
        kept = [(mem, tar.extractfile(mem).read()) for mem in tar.getmembers() if mem.name != "weights.pt"]
    with tarfile.open(tar_path, "w") as tar:
        import io

        for mem, data in kept:
            tar.addfile(mem, io.BytesIO(data))
    manifest = json.loads((Path(m.uri) / "manifest.json").read_text())
    from assay.archive import sha256_file

    manifest["package_sha256"] = sha256_file(tar_path)
    manifest["package_bytes"] = tar_path.stat().st_size
    (Path(m.uri) / "manifest.json").write_text(json.dumps(manifest))
    code, log = _runner("ppl", _ctx(m.uri, test_split.uri, tmp_path))
    assert code == EXIT_PERMANENT
    assert "file weights.pt listed in the manifest is missing" in log


def test_handler_that_fails_to_load(test_split, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "oracle", src)
    (src / "handler.py").write_text((src / "handler.py").read_text().replace(
        "        global LOADS\n", "        raise FileNotFoundError(model_dir / 'maskrcnn.pt')\n        global LOADS\n"))
    m = packages.build(packages.load_config(src / "model.yaml"), str(tmp_path / "s"), log=lambda s: None)
    code, log = _runner("ppl", _ctx(m.uri, test_split.uri, tmp_path))
    assert code == EXIT_PERMANENT
    assert "handler handler:OracleHandler.load() failed" in log and "maskrcnn.pt" in log


def test_missing_environment_is_permanent(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "assay.runner", "ppl"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}, timeout=60)
    assert proc.returncode == EXIT_PERMANENT
    assert "ASSAY_JOB_NAME" in proc.stderr
