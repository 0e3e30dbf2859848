"""The coco evaluator's engine (faster-coco-eval) against the reference (pycocotools), on
PennFudanPed instance masks: the same evaluator run with each engine gives the same 12 stats per IoU
type to 1e-9, with perturbed masks, shifted false positives and tied scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from assay.handler import RLEMasks
from assay.metrics import get_evaluator

SCHEMA = {"categories": [{"id": 1, "name": "pedestrian"}]}


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    return np.roll(np.roll(mask, dy, axis=0), dx, axis=1)


def _records(data: Path, n_images: int = 40) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    rng = np.random.default_rng(0)
    out = []
    for png in sorted((data / "PedMasks").glob("*_mask.png"))[:n_images]:
        pixels = np.asarray(Image.open(png))
        masks = [(pixels == k).astype(np.uint8) for k in range(1, int(pixels.max()) + 1)]
        h, w = pixels.shape
        objects, boxes, counts = [], [], []
        for m in masks:
            rle = mask_utils.encode(np.asfortranarray(m))
            objects.append({"category_id": 1, "bbox": mask_utils.toBbox(rle).tolist(),
                            "area": float(mask_utils.area(rle)), "iscrowd": 0,
                            "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
            for dx, dy in ((int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), (45, 0)):
                moved = mask_utils.encode(np.asfortranarray(_shift(m, dx, dy)))
                x, y, bw, bh = mask_utils.toBbox(moved)
                boxes.append([x, y, x + bw, y + bh])
                counts.append(moved["counts"])
        n = len(boxes)
        pred = {"boxes": np.asarray(boxes, np.float32).reshape(n, 4),
                "scores": rng.uniform(0, 1, n).round(2).astype(np.float32),  # two decimals: ties
                "labels": np.ones(n, np.int64), "masks": RLEMasks((h, w), tuple(counts))}
        out.append((png.stem, {"width": w, "height": h, "objects": objects}, pred))
    return out


def _stats(records, engine: str, monkeypatch) -> tuple[dict[str, list[float]], str]:
    monkeypatch.setenv("ASSAY_COCO_ENGINE", engine)
    ev = get_evaluator("coco", SCHEMA)
    for sample_id, label, pred in records:
        ev.update(sample_id, label, pred)
    report = ev.compute()
    return {k: report.full[f"{k}/stats"] for k in ("bbox", "segm")}, report.full["engine"]


def test_engine_stats_equal_pycocotools(pennfudan_dir, monkeypatch):
    pytest.importorskip("faster_coco_eval")
    records = _records(pennfudan_dir)
    ref, ref_engine = _stats(records, "pycocotools", monkeypatch)
    got, engine = _stats(records, "faster-coco-eval", monkeypatch)
    assert ref_engine.startswith("pycocotools") and engine.startswith("faster-coco-eval")
    for iou_type in ("bbox", "segm"):
        assert len(got[iou_type]) == 12
        assert np.allclose(got[iou_type], ref[iou_type], rtol=0, atol=1e-9), iou_type
    assert 0 < got["segm"][0] < 1  # a non-trivial score, not two equal trivial ones
