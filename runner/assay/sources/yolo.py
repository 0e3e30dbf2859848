"""Images with YOLO txt labels (the Ultralytics layout): the built-in ``yolo`` source.

``data_filter`` selects the images; an image's labels are the txt file of the same stem with the last
``images`` folder of its path read as ``labels`` (``images/val/a.jpg`` -> ``labels/val/a.txt``), or
beside it when its path has no ``images`` folder. ``label_filter`` selects the one file of class names:
a ``data.yaml`` (its ``names``, a list or ``{index: name}``) or a txt of one name per line. Each line is
``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 x3 y3 ...`` (a polygon), coordinates normalised to
0..1. Labels come out in the coco evaluator's format: category id = class index + 1 (COCO reserves 0),
boxes ``[x, y, w, h]`` in pixels, polygons as RLE masks. An image without a txt has no objects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from assay import masks
from assay.config_files import parse_yaml
from assay.errors import SpecError
from assay.shards import Sample
from assay.sources.images import read_image

_LINE_HINT = "a line is 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...', coordinates normalised to 0..1"


@dataclass(frozen=True)
class _Shape:
    category_id: int
    values: tuple[float, ...]  # cx cy w h, or x1 y1 x2 y2 ... (normalised)
    polygon: bool


class YoloSource:
    """Yields one Sample per selected image: the image under its format's extension, a coco label."""

    def __init__(self, data_dir: Path, data_files: list[Path], label_files: list[Path]):
        if len(label_files) != 1:
            raise SpecError(f"process yolo reads one file of class names; label_filter selected {len(label_files)} "
                            f"files under {data_dir}", "set label_filter to data.yaml or classes.txt")
        names = read_names(label_files[0])
        self.label_schema = {"task": "detection",
                             "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
        self.items: list[tuple[str, Path, list[_Shape]]] = []
        ids: dict[str, Path] = {}
        kinds: dict[bool, Path] = {}  # polygon? -> the first label file with that kind of line
        labelled, txt = 0, None
        for image in (f for f in data_files if f.is_file()):
            sample_id, txt = label_path(Path(data_dir), image)
            if sample_id in ids:
                raise SpecError(f"{image} and {ids[sample_id]} would both be sample {sample_id!r} (and share "
                                "a label file)", "give images distinct stems")
            ids[sample_id] = image
            if os.path.lexists(txt) and not txt.is_file():  # a FIFO would block; a dangling link is no "no label"
                raise SpecError(f"label file {txt} of {image} is not a readable regular file",
                                "replace it with the image's label text, or remove it")
            shapes = read_labels(txt, len(names)) if txt.is_file() else []
            labelled += txt.is_file()
            for shape in shapes:
                kinds.setdefault(shape.polygon, txt)
            self.items.append((sample_id, image, shapes))
        if txt is not None and not labelled:
            raise SpecError(f"no selected image under {data_dir} has a label file (looked for e.g. {txt})",
                            "labels/<name>.txt goes with images/<name>.jpg (Ultralytics layout)")
        if len(kinds) == 2:
            raise SpecError(f"{kinds[True]} has polygons but {kinds[False]} has boxes",
                            "give every object a polygon (instance masks) or none (boxes only)")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Sample]:
        for sample_id, image, shapes in self.items:
            data, ext, width, height = read_image(image)
            objects = [_object(s, width, height, image) for s in shapes]
            yield Sample(id=sample_id, files={ext: data}, label={"width": width, "height": height, "objects": objects})


def label_path(data_dir: Path, image: Path) -> tuple[str, Path]:
    """(sample id, label txt) of an image: ``images/val/a.jpg`` -> ``val/a``, ``labels/val/a.txt``."""
    rel = image.relative_to(data_dir).parts
    if "images" not in rel[:-1]:
        return Path(*rel).with_suffix("").as_posix(), image.with_suffix(".txt")
    cut = len(rel) - 2 - rel[-2::-1].index("images")  # the last 'images' folder
    below = Path(*rel[cut + 1:])
    return below.with_suffix("").as_posix(), Path(data_dir, *rel[:cut], "labels", below).with_suffix(".txt")


def read_names(path: Path) -> list[str]:
    """Class names from a data.yaml's ``names`` (a list, or a mapping 0..n-1 -> name) or a txt, one a line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        docs = parse_yaml(text, str(path))
        names = docs[0].get("names") if docs and isinstance(docs[0], dict) else None
        if isinstance(names, dict) and sorted(names) == list(range(len(names))):
            names = [names[i] for i in range(len(names))]
        if not isinstance(names, list):
            raise SpecError(f"{path}: no 'names' list (or mapping 0..n-1 -> name)",
                            "e.g. names: [person, car], or names: {0: person, 1: car}")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    names = [str(n) for n in names]
    if not names or len(set(names)) != len(names):
        raise SpecError(f"{path}: class names must be a non-empty list of distinct names, got {names}")
    return names


def read_labels(path: Path, num_classes: int) -> list[_Shape]:
    shapes = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                shapes.append(_parse_line(line, num_classes))
            except ValueError as exc:
                raise SpecError(f"{path} line {number}: {exc}", _LINE_HINT) from exc
    return shapes


def _parse_line(line: str, num_classes: int) -> _Shape:
    words = line.split()
    try:
        numbers = [float(w) for w in words]
    except ValueError:
        raise ValueError(f"{line.strip()!r} is not all numbers") from None
    cls, values = numbers[0], tuple(numbers[1:])
    if not (cls.is_integer() and 0 <= cls < num_classes):
        raise ValueError(f"class {words[0]} is not an index 0..{num_classes - 1} of the class names")
    if len(values) != 4 and (len(values) < 6 or len(values) % 2):
        raise ValueError(f"{len(values)} coordinates: a box has 4, a polygon an even number, at least 6")
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise ValueError("coordinates must be normalised to 0..1")
    if len(values) == 4 and not (values[2] > 0 and values[3] > 0):
        raise ValueError("box width and height must be > 0")
    return _Shape(category_id=int(cls) + 1, values=values, polygon=len(values) != 4)


def _object(shape: _Shape, width: int, height: int, image: Path) -> dict:
    if not shape.polygon:
        cx, cy, w, h = shape.values
        box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        return {"category_id": shape.category_id, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
    xs, ys = [x * width for x in shape.values[0::2]], [y * height for y in shape.values[1::2]]
    box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    if box[2] <= 0 or box[3] <= 0:
        raise SpecError(f"the labels of {image} have a polygon of no area ({shape.values})", _LINE_HINT)
    rle = masks.to_rle([[v for xy in zip(xs, ys, strict=True) for v in xy]], height, width)
    return {"category_id": shape.category_id, "bbox": box, "area": masks.rle_area_and_box(rle)[0],
            "iscrowd": 0, "segmentation": rle}
