"""Shared fixtures: the real PennFudanPed copy, a built test split, the oracle model, a moto S3 server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PENNFUDAN = REPO.parent / "shared" / "data" / "PennFudanPed"


def write_dataset_yaml(folder: Path, data_dir: Path, volume: str = "2M", name: str = "pennfudan",
                       data_filter: str = "PNGImages/*6.png", label_filter: str = "PedMasks/*6_mask.png") -> Path:
    path = folder / "dataset.yaml"
    path.write_text(f"name: {name}\ndata_dir: {data_dir}\ndata_filter: '{data_filter}'\n"
                    f"label_filter: '{label_filter}'\nprocess: pennfudan\nattr:\n  volume_size: {volume}\n")
    return path


@pytest.fixture(scope="session")
def pennfudan_dir() -> Path:
    if not (PENNFUDAN / "PNGImages").is_dir():
        pytest.skip(f"the PennFudanPed copy is not at {PENNFUDAN}")
    return PENNFUDAN


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def test_split(pennfudan_dir, store, tmp_path_factory):
    """The seed's 17-image test split, built into a local store in 3 shards."""
    from assay import datasets

    cfg = datasets.load_config(write_dataset_yaml(tmp_path_factory.mktemp("ds"), pennfudan_dir))
    return datasets.build(cfg, store, log=lambda s: None)


@pytest.fixture(scope="session")
def oracle_model(store):
    from assay import packages

    return packages.build(packages.load_config(FIXTURES / "oracle" / "model.yaml"), store, log=lambda s: None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server over real HTTP on loopback."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def gofakes3_endpoint(tmp_path_factory):
    """A gofakes3 server (scripts/install-gofakes3.sh) over real HTTP on loopback: atomic conditional writes."""
    import subprocess
    import time
    import urllib.request

    binary = REPO / ".tools" / "bin" / "gofakes3"
    if not binary.is_file():
        pytest.skip(f"gofakes3 not in {binary.parent}: run `bash scripts/install-gofakes3.sh`")
    port = free_port()
    log = tmp_path_factory.mktemp("gofakes3") / "gofakes3.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "-backend", "memory", "-host", f"127.0.0.1:{port}", "-quiet"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except urllib.error.HTTPError:  # answering: an S3 error for an anonymous listing
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"gofakes3 did not start:\n{log.read_text(errors='replace')}") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def point_s3_at(endpoint: str, monkeypatch):
    """Environment pointing boto3 (and assay) at ``endpoint``; a boto3 client for setup."""
    import boto3

    from assay import storage

    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "ASSAY_STORAGE_RETRY_DELAY": "0.01"}.items():
        monkeypatch.setenv(k, v)
    storage.reset_clients()
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """Environment pointing boto3 at the moto server; yields a boto3 client for setup."""
    from assay import storage

    yield point_s3_at(moto_endpoint, monkeypatch)
    storage.reset_clients()


def job_manifest(name: str, model_uri: str, dataset_uri: str, output_uri: str, workers: int = 2,
                 batch_size: int = 4) -> dict:
    return {"apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob", "metadata": {"name": name},
            "spec": {"model": {"uri": model_uri}, "dataset": {"uri": dataset_uri}, "output": {"uri": output_uri},
                     "ppl": {"workers": workers, "batchSize": batch_size, "device": "cpu"}}}


os.environ.setdefault("ASSAY_PROGRESS_INTERVAL", "0.2")
