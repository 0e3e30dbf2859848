"""The coco evaluator's report from shard match tables (cmp's path) against its own whole-set COCOeval.

Real PennFudanPed masks with perturbed predictions (tests/unit/test_metrics_coco.py's): each shard's
evaluator writes its ``CocoMatches`` to a match-table file, the files are read back and merged in
reverse order, and the report (stats, per-category AP, PR curves, counts) and the per-sample scores
equal ``CocoEvaluator.compute`` and ``per_sample`` with the pycocotools engine exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from assay.errors import EvaluationError
from assay.metrics import coco_tables, get_evaluator
from assay.metrics.coco import per_sample_from_matches, report_from_matches
from tests.unit.test_metrics_coco import SCHEMA, _as_results_file_gives_them, _perturbed, dataset  # noqa: F401


def _shard_matches(samples, preds, cuts, tmp_path):
    out = []
    for n, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        ev = get_evaluator("coco", SCHEMA)
        for s, p in zip(samples[lo:hi], preds[lo:hi], strict=True):
            ev.update(s["sample_id"], s["label"], p)
        path = tmp_path / f"m{n}.parquet"
        coco_tables.write(path, ev.match(lo), {"shard": n})
        matches, meta = coco_tables.read(path)
        assert meta["shard"] == n
        out.append(matches)
    return out[::-1]  # merged in any order


def _whole(samples, preds, monkeypatch):
    monkeypatch.setenv("ASSAY_COCO_ENGINE", "pycocotools")
    ev = get_evaluator("coco", SCHEMA)
    for s, p in zip(samples, preds, strict=True):
        ev.update(s["sample_id"], s["label"], p)
    return ev.compute(), ev.per_sample()


@pytest.mark.parametrize("cuts", [[0, 20], [0, 1, 7, 8, 20], list(range(21))])
def test_report_from_shard_tables_equals_whole_evaluation(dataset, tmp_path, monkeypatch, cuts):  # noqa: F811
    rng = np.random.default_rng(3)
    samples = [dict(s) for s in dataset]
    samples[0] = {**samples[0], "label": {**samples[0]["label"], "objects": [
        {**o, "iscrowd": int(i == 0)} for i, o in enumerate(samples[0]["label"]["objects"])]}}
    preds = [_as_results_file_gives_them(_perturbed(rng, s)) for s in samples]
    preds[4] = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                "labels": np.zeros(0, np.int64)}  # no masks key: says nothing about masks
    expected, expected_per_sample = _whole(samples, preds, monkeypatch)
    shards = _shard_matches(samples, preds, cuts, tmp_path)
    got = report_from_matches(SCHEMA, shards)
    assert got.full["engine"].startswith("assay match tables")
    assert {**got.full, "engine": None} == {**expected.full, "engine": None}
    assert got.summary == expected.summary and got.headline == expected.headline
    assert got.full["iou_types"] == ["bbox", "segm"] and 0.05 < got.summary["segm/AP"] < 0.99
    assert per_sample_from_matches(shards) == expected_per_sample


def test_box_only_shard_and_mask_shard_are_refused(dataset, tmp_path):  # noqa: F811
    rng = np.random.default_rng(5)
    preds = [_perturbed(rng, s) for s in dataset[:4]]
    preds[2:] = [{k: v for k, v in p.items() if k != "masks"} for p in preds[2:]]
    shards = _shard_matches(dataset[:4], preds, [0, 2, 4], tmp_path)
    assert "segm" not in shards[0].tables  # the box-only shard (merged first) has no segm table
    with pytest.raises(EvaluationError, match="masks"):
        report_from_matches(SCHEMA, shards)


def test_missing_shard_is_refused(dataset, tmp_path):  # noqa: F811
    rng = np.random.default_rng(6)
    preds = [_perturbed(rng, s) for s in dataset[:6]]
    shards = _shard_matches(dataset[:6], preds, [0, 2, 4, 6], tmp_path)
    with pytest.raises(EvaluationError, match="start at image 4 after 2"):
        report_from_matches(SCHEMA, [shards[0], shards[2]])
