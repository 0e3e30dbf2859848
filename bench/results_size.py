"""Target 4: bytes per image of assay's Parquet results vs the JSON lists of the same predictions.

Both sides come from the same model on the same images: the Parquet files the ppl benchmark wrote
(boxes, scores, labels and COCO RLE masks) and the JSON lines the seed baseline produced (the same
outputs as nested lists, masks as float probabilities, the seed's format). A second, kinder reference
is JSON with the masks thresholded to 0/1 integers.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import Row, dir_bytes


def run(results_dir: Path, images: int, json_bytes: list[int], handler, inputs_sample) -> list[Row]:
    import torch

    parquet = dir_bytes(results_dir, "*.parquet") / images
    seed = sum(json_bytes) / len(json_bytes)
    with torch.inference_mode():
        outs = handler.model([x.float().div_(255) for x in inputs_sample])
    binary = sum(len(json.dumps({"boxes": o["boxes"].tolist(), "scores": o["scores"].tolist(),
                                 "labels": o["labels"].tolist(), "masks": (o["masks"] >= 0.5).int().tolist()}))
                 for o in outs) / len(outs)
    ratio = parquet / seed
    return [Row("4 results size", "Parquet / JSON-list bytes per image", ratio, "<= 0.01", ratio <= 0.01,
                f"{parquet / 1e3:.1f} kB vs {seed / 1e6:.1f} MB (float masks); vs 0/1 masks JSON "
                f"{binary / 1e6:.2f} MB: {parquet / binary:.4f}")]
