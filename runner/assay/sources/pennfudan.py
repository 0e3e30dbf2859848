"""The Penn-Fudan pedestrian dataset's built-in sample source (finding, downloading and standing in for the
data is the demo's business: examples/pennfudan/pennfudan_data.py).

Layout (as in the original zip): ``PNGImages/X.png``, ``PedMasks/X_mask.png`` (pixel value k > 0 is
pedestrian k), ``Annotation/X.txt``. Ground truth is derived from the masks, COCO style: one object
per instance with its RLE mask, the mask's bounding box and area, category 1 ("pedestrian").
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from assay.errors import IntegrityError, SpecError
from assay.shards import Sample
from assay.sources.images import image_size

LABEL_SCHEMA = {"task": "detection", "categories": [{"id": 1, "name": "pedestrian"}]}


def mask_to_objects(mask: np.ndarray) -> list[dict]:
    """COCO objects (RLE segmentation, bbox xywh, area) for each instance id > 0 of a label mask."""
    from pycocotools import mask as mask_util

    flat = mask.ravel()
    # bincount finds the instance ids in one pass (np.unique sorts every pixel: a quarter of the build)
    ids = np.flatnonzero(np.bincount(flat)) if flat.dtype.kind == "u" else np.unique(flat)
    objects = []
    for inst in (int(i) for i in ids if i != 0):
        rle = mask_util.encode(np.asfortranarray(mask == inst, dtype=np.uint8))
        objects.append({
            "category_id": 1,
            "instance": inst,
            "bbox": [float(v) for v in mask_util.toBbox(rle)],
            "area": float(mask_util.area(rle)),
            "iscrowd": 0,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        })
    return objects


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_label(mask_png: bytes, path: Path | str = "mask") -> dict:
    from PIL import Image

    if not mask_png.startswith(PNG_SIGNATURE):
        kind = "JPEG data" if mask_png[:3] == b"\xff\xd8\xff" else "not PNG data"
        raise SpecError(f"{path} is {kind}: instance masks must be lossless PNG (lossy coding invents "
                        "and merges instance ids)", "export the masks as PNG from the original label tool")
    image_size(mask_png, Path(path))
    mask = np.asarray(Image.open(io.BytesIO(mask_png)))
    if mask.ndim != 2:
        raise IntegrityError(f"{path}: a PennFudan mask must be single-channel, got shape {mask.shape}")
    return {"height": int(mask.shape[0]), "width": int(mask.shape[1]), "objects": mask_to_objects(mask)}


class PennFudanSource:
    """Yields one Sample per image: files ``png`` and ``mask.png``, label from the mask."""

    label_schema = LABEL_SCHEMA

    def __init__(self, data_dir: Path, data_files: list[Path], label_files: list[Path]):
        self.data_dir = Path(data_dir)
        self.images = list(data_files)
        masks = {p.name: p for p in label_files} if label_files else None
        self.pairs = []
        for image in self.images:
            mask_name = f"{image.stem}_mask.png"
            mask = masks.get(mask_name) if masks is not None else self.data_dir / "PedMasks" / mask_name
            if mask is None or not mask.is_file():
                raise SpecError(f"image {image} has no mask {mask_name}",
                                "label_filter must select the PedMasks/<name>_mask.png of every image")
            self.pairs.append((image, mask))

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Sample]:
        for image, mask in self.pairs:
            image_bytes, mask_bytes = image.read_bytes(), mask.read_bytes()
            label = read_label(mask_bytes, mask)
            width, height = image_size(image_bytes, image)
            if (width, height) != (label["width"], label["height"]):
                raise SpecError(f"{mask} is {label['width']}x{label['height']} but its image {image} is "
                                f"{width}x{height}", "a mask must have its image's size; fix or drop the pair")
            yield Sample(id=image.stem, files={"png": image_bytes, "mask.png": mask_bytes}, label=label)
