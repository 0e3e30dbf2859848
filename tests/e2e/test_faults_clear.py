"""Deterministic faults end as ``error: <what, named>`` + ``hint:`` and exit 3, never "unexpected <Exception>"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from assay.cli.main import main
from assay.errors import EXIT_PERMANENT


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "unexpected" not in err, err
    assert "error: " in err and "hint: " in err, err
    return code, err


def _model_yaml(folder: Path, section: dict, name: str = "m") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump({"name": name, "torchvision": section}))
    return path


def test_a_safetensors_file_that_is_not_one(tmp_path, capsys):
    path = _model_yaml(tmp_path / "pkg", {"architecture": "resnet18", "num_classes": 10, "weights": "w.safetensors"})
    (tmp_path / "pkg" / "w.safetensors").write_text("not safetensors at all")
    code, err = _run(["model", "build", str(path), "--store", str(tmp_path / "store")], capsys)
    assert code == EXIT_PERMANENT
    assert "w.safetensors is not a safetensors file" in err


def test_torchvision_weights_by_name_without_network(tmp_path, capsys, monkeypatch):
    import urllib.error

    import torch.hub

    def refused(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refused)
    path = _model_yaml(tmp_path / "pkg", {"architecture": "resnet18", "weights": "DEFAULT"})
    code, err = _run(["model", "build", str(path), "--store", str(tmp_path / "store")], capsys)
    assert code == EXIT_PERMANENT
    assert "torchvision weights ResNet18_Weights.IMAGENET1K_V1: cannot download https://" in err
    assert "resnet18-f37072fd.pth" in err and "Connection refused" in err


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_or_bool_weight_tensors(tmp_path, capsys, dtype):
    from torchvision.models import mobilenet_v3_small

    path = _model_yaml(tmp_path / "pkg", {"architecture": "mobilenet_v3_small", "num_classes": 2, "weights": "w.pt"})
    state = mobilenet_v3_small(weights=None, num_classes=2).state_dict()
    torch.save({k: v.to(dtype) for k, v in state.items()}, tmp_path / "pkg" / "w.pt")
    code, err = _run(["model", "build", str(path), "--store", str(tmp_path / "store")], capsys)
    assert code == EXIT_PERMANENT
    assert "weight tensors are not floating point" in err and str(dtype) in err


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- {name: refused, cluster: {server: "https://127.0.0.1:%d"}}
- {name: unknown, cluster: {server: "https://no-such-host.invalid:6443"}}
contexts:
- {name: refused, context: {cluster: refused, user: u, namespace: ns}}
- {name: unknown, context: {cluster: unknown, user: u}}
current-context: refused
users:
- {name: u, user: {token: abc}}
"""


@pytest.mark.parametrize("argv", [["job", "list"], ["job", "cancel", "foo"], ["job", "watch", "foo"]])
def test_assay_job_against_an_unreachable_api_server(tmp_path, capsys, monkeypatch, argv):
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    (tmp_path / "kubeconfig").write_text(KUBECONFIG % port)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    from kubernetes.config import kube_config  # reads $KUBECONFIG once, at import

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    code, err = _run(argv, capsys)
    assert code == 1, "the server may come back: retrying can help"
    assert f"cannot reach the Kubernetes API server https://127.0.0.1:{port}: " in err
    assert "Connection refused" in err and "MaxRetryError" not in err
    code, err = _run([*argv, "--context", "unknown"], capsys)
    assert code == EXIT_PERMANENT
    assert "cannot reach the Kubernetes API server https://no-such-host.invalid:6443: its name does not resolve" in err


def test_missing_s3_credentials_is_a_configuration_fault(s3, tmp_path, capsys, monkeypatch):
    from assay import storage

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage.reset_clients()
    code, err = _run(["dataset", "list", "--store", "s3://bucket/store"], capsys)
    assert code == EXIT_PERMANENT
    assert "no S3 credentials for s3://bucket/store" in err and "cannot reach the store" not in err
    assert "AWS_ACCESS_KEY_ID" in err


JPEG_SOURCE = """
from assay.shards import Sample

class Src:
    label_schema = {"task": "classification", "classes": ["a", "b"]}
    def __init__(self, data_dir, data_files, label_files):
        self.files = data_files
    def __iter__(self):
        for i, f in enumerate(self.files):
            yield Sample(f.stem, {"jpg": f.read_bytes()}, {"class": i % 2})
"""


@pytest.fixture(scope="module")
def jpeg_run(tmp_path_factory):
    """A classification dataset of four JPEGs, ``img2`` truncated, and a small built-in classifier."""
    import io

    import numpy as np
    from PIL import Image
    from torchvision.models import mobilenet_v3_small

    from assay import datasets, packages

    root = tmp_path_factory.mktemp("jpeg")
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        data = buf.getvalue()
        (root / "data" / f"img{i}.jpg").write_bytes(data[: len(data) // 2] if i == 2 else data)
    (root / "src.py").write_text(JPEG_SOURCE)
    (root / "dataset.yaml").write_text(yaml.safe_dump({"name": "jpegs", "data_dir": "data", "data_filter": "*.jpg",
                                                       "process": "src:Src"}))
    store = str(root / "store")
    dataset = datasets.build(datasets.load_config(root / "dataset.yaml"), store, log=lambda s: None)
    path = _model_yaml(root / "pkg", {"architecture": "mobilenet_v3_small", "num_classes": 2, "weights": "w.pt",
                                      "input": {"resize": 32, "crop": 32}})
    torch.save(mobilenet_v3_small(weights=None, num_classes=2).state_dict(), root / "pkg" / "w.pt")
    model = packages.build(packages.load_config(path), store, log=lambda s: None)
    return root, dataset, model


def test_a_truncated_jpeg_at_run_time_names_its_sample(jpeg_run, tmp_path, capsys):
    from tests.conftest import job_manifest

    root, dataset, model = jpeg_run
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_manifest("jpeg", model.uri, dataset.uri, str(tmp_path / "out"), workers=1)))
    code, err = _run(["run", str(job), "--no-progress"], capsys)
    assert code == EXIT_PERMANENT
    assert "sample 'img2'" in err and "shard 0" in err


@pytest.mark.parametrize("damage", [b"{not json", b"\xff\xfe\x00garbage"])
def test_one_damaged_manifest_does_not_hide_the_store(test_split, oracle_model, tmp_path, capsys, damage):
    import shutil

    store = tmp_path / "store"
    for kind, uri in (("datasets", test_split.uri), ("models", oracle_model.uri)):
        for name in ("good", "bad"):
            shutil.copytree(uri, store / kind / name / Path(uri).name)
        (store / kind / "bad" / Path(uri).name / "manifest.json").write_bytes(damage)
    for command, folder, kind in (("dataset", "datasets", "datasets"), ("model", "models", "model packages")):
        code = main([command, "list", "--store", str(store)])
        out, err = capsys.readouterr()
        assert code == EXIT_PERMANENT, err
        assert "unexpected" not in err and "hint: " in err
        assert f"{store}/{folder}/good/" in out and f"error: {store}/{folder}/bad/" in err
        assert "not a valid" in err and f"1 of the {kind} left out of the list" in err


CHECK_SOURCE = """
import io

import numpy as np
from PIL import Image

from assay.shards import Sample


class Src:
    label_schema = {"task": "detection", "categories": [{"id": 1, "name": "thing"}]}

    def __init__(self, data_dir, data_files, label_files):
        self.mode = data_files[0].read_text().strip()

    def __iter__(self):
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(buf, format="JPEG")
            data = buf.getvalue()
            if self.mode == "truncated" and i in (1, 3):
                data = data[: len(data) // 2]
            crowd = 1 if self.mode == "crowd" else 0
            objects = [{"category_id": 1, "bbox": [4.0, 4.0, 10.0, 10.0], "area": 100.0, "iscrowd": crowd}]
            yield Sample(f"s{i}", {"jpg": data}, {"width": 32, "height": 32, "objects": objects})
"""


def _check_dataset(tmp_path: Path, mode: str):
    from assay import datasets

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mode.txt").write_text(mode)
    (tmp_path / "src.py").write_text(CHECK_SOURCE)
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"name": mode, "data_dir": "data", "data_filter": "*.txt",
                                                           "process": "src:Src"}))
    return datasets.build(datasets.load_config(tmp_path / "dataset.yaml"), str(tmp_path / "store"),
                          log=lambda s: None)


def test_dataset_check_names_images_that_do_not_decode(tmp_path, capsys):
    dataset = _check_dataset(tmp_path, "truncated")
    assert main(["dataset", "check", dataset.uri]) == EXIT_PERMANENT
    out = capsys.readouterr().out
    assert "FAILED: data fault: image does not decode in s1, s3" in out, out
    assert "data: image does not decode: s1: shard 0, jpg, " in out


def test_dataset_check_explains_an_all_crowd_ground_truth(tmp_path, capsys):
    dataset = _check_dataset(tmp_path, "crowd")
    assert main(["dataset", "check", dataset.uri]) == EXIT_PERMANENT
    out = capsys.readouterr().out
    assert "bbox AP -1.000" in out and "no label explains" not in out, out
    assert "only crowd objects (iscrowd: 1), which COCO never scores: AP is -1, nothing to score in s0, s1, s2, s3" \
        in out


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (as root; CI runs as root): a disk that fills up for real."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_full_disk_is_named(store, full_disk, pennfudan_dir, tmp_path, capsys, request, monkeypatch):
    """Before: `error: No space left on device`, naming no folder (the write of a shard fills the disk and
    a write() has no file name), so a user could not tell the store's disk from the temp folder's."""
    from tests.conftest import write_dataset_yaml

    data = tmp_path / "data"
    for sub in ("PNGImages", "PedMasks"):
        (data / sub).mkdir(parents=True)
    for name in ("FudanPed00016", "PennPed00016", "FudanPed00026", "PennPed00026", "FudanPed00036"):
        (data / "PNGImages" / f"{name}.png").symlink_to(pennfudan_dir / "PNGImages" / f"{name}.png")
        (data / "PedMasks" / f"{name}_mask.png").symlink_to(pennfudan_dir / "PedMasks" / f"{name}_mask.png")
    config = write_dataset_yaml(tmp_path, data, volume="1M")
    if store == "local":
        target, folder = str(full_disk / "store"), full_disk / "store" / ".staging"
    else:
        request.getfixturevalue("s3").create_bucket(Bucket="full")
        (full_disk / "tmp").mkdir()
        monkeypatch.setenv("TMPDIR", str(full_disk / "tmp"))
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
        target, folder = "s3://full/store", full_disk / "tmp"
    code, err = _run(["dataset", "build", str(config), "--store", target], capsys)
    assert code == EXIT_PERMANENT
    assert f"error: No space left on device: the {'store' if store == 'local' else 'temp'}" in err, err
    assert str(folder) in err, err
    assert ("`df -h" in err and "TMPDIR" in err) if store == "s3" else "the store's disk" in err
