"""The oracle: a built-in handler that predicts each sample's own ground truth.

``assay dataset check`` packages it as a model and runs it through the real ppl and cmp path, so a
dataset scored with it must give bbox/segm AP 1.000 (coco) or accuracy 1.000 (classification); any
other number is a pipeline or labelling fault. Its predictions are what a perfect model could output,
no more: boxes lie inside the image (torchvision clips them), an instance is predicted once (NMS
keeps one of two identical detections), crowd regions are not predicted. So a box outside the image
or a duplicated instance lowers the score instead of passing unseen.

The package holds ``oracle.json``: ``{"evaluator": "coco" | "classification", "masks": bool}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from assay.handler import Handler, RLEMasks
from assay.masks import counts_of
from assay.shards import Sample

if TYPE_CHECKING:
    import torch

#: Prediction field that carries the id the worker saw, to check that ids round-trip to cmp.
ID_FIELD = "oracle_id"


class OracleHandler(Handler):
    def load(self, model_dir: Path, device: torch.device) -> None:
        self.config = json.loads((model_dir / "oracle.json").read_text())

    def decode(self, sample: Sample) -> tuple[str, dict[str, Any]]:
        # the label inside the shard, not the labels file cmp reads: the check compares the two copies
        return sample.id, sample.label

    def predict(self, batch: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        evaluator = self.config["evaluator"]
        masks = bool(self.config.get("masks"))
        out = []
        for sample_id, label in batch:
            pred = coco_prediction(label, masks) if evaluator == "coco" else classification_prediction(label)
            out.append({**pred, ID_FIELD: sample_id})
        return out


def classification_prediction(label: dict[str, Any]) -> dict[str, Any]:
    value = label.get("label")
    # a label that is no class index becomes -1, which the evaluator refuses naming the sample
    index = value if isinstance(value, int | np.integer) and not isinstance(value, bool) else -1
    return {"label": np.int64(index)}


def coco_prediction(label: dict[str, Any], masks: bool) -> dict[str, Any]:
    """boxes (N, 4) float64 x1 y1 x2 y2 clipped to the image, scores 1.0, labels, and RLE masks."""
    height, width = int(label.get("height", 0)), int(label.get("width", 0))
    boxes, labels, rles, seen = [], [], [], set()
    for obj in label.get("objects", []):
        if obj.get("iscrowd"):
            continue
        x, y, w, h = (float(v) for v in obj["bbox"])
        box = (min(max(x, 0.0), width), min(max(y, 0.0), height),
               min(max(x + w, 0.0), width), min(max(y + h, 0.0), height))
        rle = counts_of(obj.get("segmentation"), height, width) if masks else None
        key = (int(obj["category_id"]), box, rle)
        if key in seen:  # a model outputs one detection per object
            continue
        seen.add(key)
        boxes.append(box)
        labels.append(key[0])
        rles.append(rle)
    pred: dict[str, Any] = {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
                            "scores": np.ones(len(boxes), np.float32), "labels": np.asarray(labels, np.int64)}
    if masks:
        # a missing segmentation becomes an empty mask of the image's size: the lint names the object
        pred["masks"] = RLEMasks((height, width), tuple(r or _empty_rle(height, width) for r in rles))
    return pred


def _empty_rle(height: int, width: int) -> bytes:
    from pycocotools import mask as mask_util

    return mask_util.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]["counts"]
