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
