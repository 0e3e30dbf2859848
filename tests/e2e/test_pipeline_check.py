"""`assay dataset check`: a dataset's own ground truth through ppl and cmp scores exactly 1.000.

Pins issue 12: a newcomer could not tell a broken pipeline from a weak model. The check must give
1.000 on PennFudanPed (coco) and on a classification set, and name the fault and the samples on a
deliberately mislabelled set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from assay.check import check
from assay.cli.main import main
from assay.runner.local import evaluate
from tests.conftest import build_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_pennfudan_scores_one(test_split, capsys):
    assert main(["dataset", "check", test_split.uri, "--workers", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert "bbox AP 1.000, segm AP 1.000" in line and "the pipeline scores exactly" in line, line


def test_classification_digits_scores_one(tmp_path, capsys):
    sys.path.insert(0, str(FIXTURES / "digits"))
    from digits_source import write_digits

    write_digits(tmp_path / "data", count=120)
    ds = build_dataset(tmp_path, str(tmp_path / "store"), "digits", "digits_source:DigitsSource", "*.png",
                       "labels.json", FIXTURES / "digits" / "digits_source.py")
    assert len(ds.shards) > 1, "several shards, so ids from every shard must round-trip"
    # by name in the store, the way the README shows it
    assert main(["dataset", "check", "digits", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "accuracy 1.000" in out and "120 samples" in out and "scores exactly" in out, out


def test_mislabelled_dataset_names_faults_and_samples(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("the source makes its own images")
    ds = build_dataset(tmp_path, str(tmp_path / "store"), "boxes", "boxes_source:BoxesSource", "*.txt",
                       source=FIXTURES / "mislabelled" / "boxes_source.py")
    result = check(ds.uri, evaluate)
    assert not result.ok and result.scores["bbox/AP"] < 1.0 and result.scores["segm/AP"] < 1.0
    assert {k: sorted({s for s, _ in v}) for k, v in result.faults.items()} == {
        "duplicate instance": ["ped-2"], "empty mask": ["ped-3"], "box outside the image": ["ped-4"]}
    assert main(["dataset", "check", ds.uri, "--format", "json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["faults"]["duplicate instance"][0]["detail"].startswith("objects 0 and 2")
    assert main(["dataset", "check", ds.uri]) == 3
    line = capsys.readouterr().out.splitlines()[0]
    assert "FAILED" in line and "labelling fault: duplicate instance in ped-2" in line, line
    assert "empty mask in ped-3" in line and "box outside the image in ped-4" in line, line
