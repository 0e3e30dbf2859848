"""COCO segmentations (polygons, uncompressed and compressed RLE) checked and turned into compressed RLE.

Every RLE is checked before pycocotools sees it: its decoder writes ``sum(counts)`` pixels without
a bounds check, so a count that does not add up to height x width would write past the mask.
Errors are ``ValueError``s with a short reason; the sources add the file and the annotation.
"""

from __future__ import annotations

import math
from typing import Any


def to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """``{"size": [H, W], "counts": str}`` (compressed, ASCII) of a COCO segmentation at the image's size."""
    from pycocotools import mask as mask_util

    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(_polygons(segmentation), height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        _check_counts(segmentation, [int(v) for v in segmentation["counts"]], height, width)
        rle = mask_util.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        _check_counts(segmentation, decode_counts(segmentation["counts"]), height, width)
        return {"size": [height, width], "counts": segmentation["counts"]}
    else:
        raise TypeError("segmentation must be a list of polygons or an RLE {size, counts}")
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def counts_of(segmentation: Any, height: int, width: int) -> bytes | None:
    """The compressed RLE counts (bytes, as pycocotools takes them) of a segmentation; None for none."""
    return None if segmentation is None else to_rle(segmentation, height, width)["counts"].encode("ascii")


def rle_area_and_box(rle: dict[str, Any]) -> tuple[float, list[float]]:
    """Pixel count and ``[x, y, w, h]`` of a compressed RLE."""
    from pycocotools import mask as mask_util

    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return float(mask_util.area(coded)), [float(v) for v in mask_util.toBbox(coded)]


def _polygons(polygons: list) -> list[list[float]]:
    if not polygons:
        raise ValueError("segmentation is an empty list of polygons")
    out = []
    for poly in polygons:
        # pycocotools reads a 4-number list as a box, not a polygon: demand three points
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            raise ValueError("a polygon must be a flat list [x1, y1, x2, y2, x3, y3, ...] of at least 3 points")
        if not all(is_finite_number(v) for v in poly):
            raise ValueError("polygon coordinates must be finite numbers")
        out.append([float(v) for v in poly])
    return out


def _check_counts(rle: dict[str, Any], counts: list[int], height: int, width: int) -> None:
    size = rle.get("size")
    if not isinstance(size, list) or [v for v in size] != [height, width]:
        raise ValueError(f"RLE size {size!r} is not the image's [height, width] [{height}, {width}]")
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE counts must be non-negative and add up to height x width ({height * width}), "
                         f"got {sum(counts)}")


def decode_counts(text: str) -> list[int]:
    """The run lengths of a compressed RLE string (pycocotools' ``rleFrString``, with bounds checks)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p >= len(text):
                raise ValueError("RLE counts string is truncated")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string has an invalid character {text[p]!r}")
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def is_finite_number(value: Any) -> bool:
    """An int or a finite float from parsed JSON or YAML (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
