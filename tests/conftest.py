"""Shared fixtures: PennFudanPed (the real copy, else the demo's synthetic stand-in), a built test split,
the oracle model, a moto S3 server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PENNFUDAN = REPO.parent / "shared" / "data" / "PennFudanPed"
#: PennFudanPed's image names: 74 from Fudan, 96 from Penn
PENNFUDAN_NAMES = [f"FudanPed{i:05d}" for i in range(1, 75)] + [f"PennPed{i:05d}" for i in range(1, 97)]
SYNTHETIC_SCALE = 1.6  # the stand-in's test split in 3 shards at 2M, as the real one's


def example_module(name: str):
    """A module of examples/pennfudan, loaded from its file: that folder on sys.path would make its
    handler.py importable as `handler` for the rest of the session."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / "pennfudan" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_pennfudan() -> bool:
    """Whether the tests see the real PennFudanPed: ASSAY_TEST_SYNTHETIC=1 hides it, as a clean clone
    without ../shared/data does not have it."""
    return (PENNFUDAN / "PNGImages").is_dir() and os.environ.get("ASSAY_TEST_SYNTHETIC", "") in ("", "0")


def write_dataset_yaml(folder: Path, data_dir: Path, volume: str = "2M", name: str = "pennfudan",
                       data_filter: str = "PNGImages/*6.png", label_filter: str = "PedMasks/*6_mask.png") -> Path:
    path = folder / "dataset.yaml"
    path.write_text(f"name: {name}\ndata_dir: {data_dir}\ndata_filter: '{data_filter}'\n"
                    f"label_filter: '{label_filter}'\nprocess: pennfudan\nattr:\n  volume_size: {volume}\n")
    return path


def build_dataset(folder: Path, store: str, name: str, process: str, data_filter: str, label_filter: str = "",
                  source: Path | None = None):
    """A dataset of ``folder``/data by the source ``process``, in 64K shards; ``source``: its module, copied beside."""
    from assay import datasets

    if source:
        shutil.copy(source, folder / source.name)
    (folder / "dataset.yaml").write_text(f"name: {name}\ndata_dir: {folder / 'data'}\ndata_filter: '{data_filter}'\n"
                                         + (f"label_filter: '{label_filter}'\n" if label_filter else "")
                                         + f"process: {process}\nattr: {{volume_size: 64K}}\n")
    return datasets.build(datasets.load_config(folder / "dataset.yaml"), store, log=lambda s: None)


@pytest.fixture(scope="session")
def pennfudan_dir(tmp_path_factory) -> Path:
    """The real PennFudanPed at ../shared/data beside the repository; without it, the demo's synthetic
    set under PennFudanPed's file names (the same 17-image test split and sample ids; other pixels)."""
    if real_pennfudan():
        return PENNFUDAN
    root = example_module("pennfudan_data").synthesize(tmp_path_factory.mktemp("data"), names=PENNFUDAN_NAMES,
                                                       scale=SYNTHETIC_SCALE)
    return root.rename(root.with_name("PennFudanPed"))  # the folder's name as a download unpacks it


@pytest.fixture(scope="session")
def trained_example(pennfudan_dir, tmp_path_factory) -> SimpleNamespace:
    """`make demo`, the README's first command, offline with a 2-step model: the one training of the
    example model in a test run, shared by the tests that need a trained example (its install step is
    skipped: this venv is the one under test). ``proc``: the finished make; ``store`` holds what it
    built; ``model_dir``: train.py's output beside the example's handler.py, model_def.py, model.yaml;
    ``job_dir``: the output of the demo's `assay run` of that model."""
    base = tmp_path_factory.mktemp("demo")
    store, work = base / "store", base / "work"
    args = f"--offline --steps 2 --store {store} --workdir {work}"
    if not real_pennfudan():  # the demo finds ../shared/data itself; the stand-in it must be given
        args += f" --data {pennfudan_dir}"
    proc = subprocess.run(["make", "-o", "install", "demo", f"PY={sys.executable}", f"DEMO_ARGS={args}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(proc=proc, store=store, model_dir=work / "model", job_dir=work / "jobs" / "pennfudan-demo")


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


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``assay ARGS`` in a process of its own (without ASSAY_DEBUG: tracebacks are what tests look for)."""
    full = {**os.environ, **(env or {})}
    full.pop("ASSAY_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "assay.cli.main", *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


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
