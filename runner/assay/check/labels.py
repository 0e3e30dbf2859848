"""Label lint: the labelling faults that keep a dataset's own ground truth from scoring 1.000.

Pure functions over the ``{"id", "label"}`` records of the shards' label files (no image is read), one
per evaluator. Each finding names the sample and, for coco, the object (its position in ``objects``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Two objects of one category whose masks (or boxes, without masks) overlap at least this much are
#: one instance labelled twice: a model finds it once, so the second copy is a miss.
DUPLICATE_IOU = 0.95


@dataclass(frozen=True)
class Finding:
    sample_id: str
    fault: str  # short kind, e.g. "duplicate instance"; findings are grouped by it
    detail: str = ""


def lint(evaluator: str, label_schema: dict[str, Any], records: list[dict[str, Any]]) -> list[Finding]:
    if evaluator == "classification":
        return [f for r in records for f in _lint_classification(label_schema, r["id"], r["label"])]
    cat_ids = {int(c["id"]) for c in label_schema.get("categories") or [] if isinstance(c, dict) and "id" in c}
    with_masks = any("segmentation" in o for r in records for o in r["label"].get("objects", []))
    return [f for r in records for f in _lint_coco(cat_ids, with_masks, r["id"], r["label"])]


def _lint_classification(schema: dict[str, Any], sample_id: str, label: dict[str, Any]) -> list[Finding]:
    n = len(schema.get("classes") or [])
    value = label.get("label")
    if not isinstance(value, int) or isinstance(value, bool):
        return [Finding(sample_id, "label is not a class index", f"label {value!r}")]
    if not 0 <= value < n:
        return [Finding(sample_id, "class index out of range", f"label {value}, classes 0..{n - 1}")]
    return []


def _lint_coco(cat_ids: set[int], with_masks: bool, sample_id: str, label: dict[str, Any]) -> list[Finding]:
    try:
        height, width = int(label["height"]), int(label["width"])
    except (KeyError, TypeError, ValueError):
        return [Finding(sample_id, "no image size", "label needs integer width and height")]
    out: list[Finding] = []
    objects = [o for o in label.get("objects", []) if not o.get("iscrowd")]
    for k, obj in enumerate(objects):
        out += [Finding(sample_id, fault, f"object {k}: {detail}")
                for fault, detail in _object_faults(obj, cat_ids, with_masks, height, width)]
    out += _duplicates(sample_id, objects, height, width, with_masks)
    return out


def _object_faults(obj: dict[str, Any], cat_ids: set[int], with_masks: bool, height: int,
                   width: int) -> list[tuple[str, str]]:
    faults = []
    if obj.get("category_id") not in cat_ids:
        faults.append(("unknown category", f"category_id {obj.get('category_id')!r} not in {sorted(cat_ids)}"))
    try:
        x, y, w, h = (float(v) for v in obj["bbox"])
    except (KeyError, TypeError, ValueError):
        return [*faults, ("malformed box", f"bbox {obj.get('bbox')!r} is not [x, y, w, h]")]
    if w <= 0 or h <= 0:
        faults.append(("empty box", f"bbox {obj.get('bbox')}"))
    elif x < 0 or y < 0 or x + w > width or y + h > height:
        faults.append(("box outside the image", f"bbox {[x, y, w, h]} in a {width}x{height} image"))
    segm = obj.get("segmentation")
    if with_masks and segm is None:
        faults.append(("missing mask", "other objects have a segmentation"))
    elif isinstance(segm, dict) and [int(v) for v in segm.get("size", ())] != [height, width]:
        faults.append(("mask size differs from the image", f"size {segm.get('size')} vs [{height}, {width}]"))
    elif segm is not None and _area(segm, height, width) == 0:
        faults.append(("empty mask", "the segmentation covers no pixel"))
    return faults


def _area(segm: Any, height: int, width: int) -> float:
    from pycocotools import mask as mask_util

    from assay.masks import counts_of

    return float(mask_util.area({"size": [height, width], "counts": counts_of(segm, height, width)}))


def _duplicates(sample_id: str, objects: list[dict[str, Any]], height: int, width: int,
                with_masks: bool) -> list[Finding]:
    if len(objects) < 2:
        return []
    import numpy as np
    from pycocotools import mask as mask_util

    from assay.masks import counts_of

    out = []
    for cat in sorted({o.get("category_id") for o in objects}, key=str):
        idx = [k for k, o in enumerate(objects) if o.get("category_id") == cat]
        if len(idx) < 2:
            continue
        try:
            if with_masks:
                items = [{"size": [height, width], "counts": counts_of(objects[k]["segmentation"], height, width)}
                         for k in idx]
            else:
                items = [[float(v) for v in objects[k]["bbox"]] for k in idx]
            iou = np.asarray(mask_util.iou(items, items, [0] * len(items)))
        except (KeyError, TypeError, ValueError):
            continue  # malformed objects are named by _object_faults
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if iou[a, b] >= DUPLICATE_IOU:
                    out.append(Finding(sample_id, "duplicate instance",
                                       f"objects {idx[a]} and {idx[b]} overlap at IoU {iou[a, b]:.2f}"))
    return out
