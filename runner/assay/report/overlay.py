"""Ground truth and predictions drawn over a sample's image, for the report's galleries (PIL only).

Ground truth is green, predictions are orange; masks are filled at 40% opacity under their box
outline. Predictions below ``min_score`` are left out (a detector's long tail of low scores would hide
the image) and counted in the caption instead.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

GROUND_TRUTH = (0, 200, 80)
PREDICTION = (255, 140, 0)
#: Gallery images are scaled to fit this box; tiny images (8x8 digits) are scaled up to the lower bound.
MAX_SIDE, MIN_SIDE = 400, 96
#: Pixels beyond the image that clipped box edges go to: wider than any outline, so it is not drawn.
CLIP_MARGIN = 4


def open_rgb(data: bytes) -> Image.Image:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def fit(img: Image.Image) -> Image.Image:
    """``img`` scaled to the gallery's size: down to MAX_SIDE, or up to MIN_SIDE with crisp pixels."""
    from PIL import Image

    side = max(img.size)
    if side > MAX_SIDE:
        scale, resample = MAX_SIDE / side, Image.Resampling.LANCZOS
    elif side < MIN_SIDE:
        scale, resample = MIN_SIDE / side, Image.Resampling.NEAREST
    else:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)


def jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()


def detections(data: bytes, label: dict[str, Any], prediction: dict[str, Any],
               min_score: float = 0.5) -> tuple[bytes, int]:
    """(JPEG bytes of the image with the coco label and prediction drawn, predictions left out)."""
    from PIL import Image, ImageDraw

    img = open_rgb(data)
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for obj in label.get("objects", []):
        _fill(layer, _gt_mask(obj.get("segmentation"), img.height, img.width), GROUND_TRUTH)
        x, y, w, h = (float(v) for v in obj["bbox"])
        box = clip([x, y, x + w, y + h], img.width, img.height)
        if box:
            draw.rectangle(box, outline=(*GROUND_TRUTH, 255), width=3)
    boxes = np.asarray(prediction.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(prediction.get("scores", np.zeros(len(boxes))), dtype=np.float64)
    masks = prediction.get("masks")
    masks = masks.to_coco() if hasattr(masks, "to_coco") else masks
    shown = np.flatnonzero(scores >= min_score)
    for i in shown.tolist():
        if masks is not None:
            _fill(layer, _decode(masks[i]), PREDICTION)
        box = clip(boxes[i].tolist(), img.width, img.height)
        if box:
            draw.rectangle(box, outline=(*PREDICTION, 255), width=2)
            draw.text((max(box[0], 0) + 3, max(box[1], 0) + 2), f"{scores[i]:.2f}", fill=(*PREDICTION, 255))
    img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    return jpeg(fit(img)), len(boxes) - len(shown)


def clip(box: list[float], width: int, height: int) -> list[float] | None:
    """``x1, y1, x2, y2`` clipped to just outside the image (so an edge beyond it stays unseen), or None
    for a box that misses the image or is not finite. PIL walks every pixel of an unclipped outline: a
    box at 1e9 took minutes, one at 1e30 overflowed its C ints (SystemError)."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box) or x2 < 0 or y2 < 0 or x1 > width or y1 > height:
        return None
    return [min(max(v, -CLIP_MARGIN), limit + CLIP_MARGIN) for v, limit in zip(box, (width, height) * 2, strict=True)]


def _fill(layer: Image.Image, mask: np.ndarray | None, color: tuple[int, int, int]) -> None:
    if mask is None or not mask.any():
        return
    from PIL import Image

    tint = Image.new("RGBA", layer.size, (*color, 100))
    layer.paste(tint, (0, 0), Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L"))


def _decode(rle: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    return mask_util.decode({"size": [int(v) for v in rle["size"]],
                             "counts": counts.encode("ascii") if isinstance(counts, str) else counts})


def _gt_mask(segm: Any, height: int, width: int) -> np.ndarray | None:
    """A ground-truth segmentation (RLE or polygons) as a mask of the image's size, or None."""
    from assay.masks import counts_of

    counts = counts_of(segm, height, width)
    return None if counts is None else _decode({"size": [height, width], "counts": counts})
