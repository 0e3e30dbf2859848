"""One store by default, and names resolved in it (issue 12: `assay dataset list` after the demo printed
(none), and `assay dataset info NAME` said "build one" for a dataset that existed)."""

from __future__ import annotations

from assay.cli.main import main
from assay.layout import DEFAULT_STORE, default_store, resolve_ref


def test_resolve_ref(tmp_path, monkeypatch):
    assert resolve_ref("pennfudan", "s3://b/assay", "datasets") == "s3://b/assay/datasets/pennfudan"
    assert resolve_ref("pennfudan@abc123", "/st", "datasets") == "/st/datasets/pennfudan/abc123"
    assert resolve_ref("m", "/st", "models") == "/st/models/m"
    assert resolve_ref("s3://b/x/datasets/p", "/st", "datasets") == "s3://b/x/datasets/p"
    assert resolve_ref("./p", "/st", "datasets") == "./p"
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "LATEST").write_text("v1")
    monkeypatch.chdir(tmp_path)
    assert resolve_ref("local", "/st", "datasets") == "local", "a local name folder is taken as a path"


def test_default_store_is_shared(monkeypatch):
    monkeypatch.delenv("ASSAY_STORE", raising=False)
    assert default_store() == DEFAULT_STORE == ".assay/store"
    monkeypatch.setenv("ASSAY_STORE", "s3://bucket/assay")
    assert default_store() == "s3://bucket/assay"


def test_info_and_list_by_name(test_split, oracle_model, store, capsys, monkeypatch):
    assert main(["dataset", "info", "pennfudan", "--store", store]) == 0
    assert "name: pennfudan\nversion: " in capsys.readouterr().out
    assert main(["dataset", "info", f"pennfudan@{test_split.version}", "--store", store]) == 0
    assert "samples: 17" in capsys.readouterr().out
    assert main(["model", "info", "oracle", "--store", store]) == 0
    assert "name: oracle\nversion: " in capsys.readouterr().out  # the latest (other tests build variants)
    assert main(["model", "info", f"oracle@{oracle_model.version}", "--store", store]) == 0
    assert f"version: {oracle_model.version}" in capsys.readouterr().out
    monkeypatch.setenv("ASSAY_STORE", store)  # the default store, as the demo and the CLI share it
    assert main(["dataset", "list"]) == 0
    assert test_split.version in capsys.readouterr().out
    assert main(["dataset", "info", "nosuch", "--store", store]) == 3
    assert "no dataset at" in capsys.readouterr().err
