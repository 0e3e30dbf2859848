"""COCO instances JSON plus its image folder: the built-in ``coco`` source.

``label_filter`` selects the one instances JSON; ``data_filter`` selects the images. An image's
``file_name`` is matched against the end of the selected files' paths, so ``000000000139.jpg`` and
``val2017/000000000139.jpg`` both find ``<data_dir>/val2017/000000000139.jpg``. The JSON defines the
dataset: every image it lists is a sample (with no objects when it has no annotation), in image id
order, with the id ``str(image id)`` so that predictions go back to COCO result files unchanged;
selected files the JSON does not list are ignored. Segmentations become compressed RLE at the image's
size; the JSON's ``area`` is kept (COCO's small/medium/large use it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from assay import masks
from assay.errors import SpecError
from assay.shards import Sample
from assay.sources.images import read_image

_HINT = "fix the instances JSON (see docs/formats.md, process: coco)"


class CocoSource:
    """Yields one Sample per image of the JSON: the image under its format's extension, a coco label."""

    def __init__(self, data_dir: Path, data_files: list[Path], label_files: list[Path]):
        if len(label_files) != 1:
            raise SpecError(f"process coco reads one instances JSON; label_filter selected {len(label_files)} "
                            f"files under {data_dir}", "set label_filter to it, e.g. "
                            "'annotations/instances_val2017.json'")
        self.json_path = path = label_files[0]
        doc = _read_json(path)
        categories = _categories(doc, path)
        self.label_schema = {"task": "detection", "categories": categories}
        self.images = _images(doc, path)
        self.annotations = _annotations(doc, path, self.images, {c["id"] for c in categories})
        files = _FileIndex(data_dir, data_files)
        self.files = {image_id: files.find(image["file_name"], f"{path}: image {image_id}")
                      for image_id, image in self.images.items()}

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Sample]:
        for image_id, image in self.images.items():
            file = self.files[image_id]
            data, ext, width, height = read_image(file)
            if (width, height) != (image["width"], image["height"]):
                raise SpecError(f"{self.json_path}: image {image_id} is {image['width']}x{image['height']} in "
                                f"the JSON but {file} is {width}x{height}", _HINT)
            objects = [self._object(ann, image) for ann in self.annotations.get(image_id, [])]
            yield Sample(id=str(image_id), files={ext: data},
                         label={"width": width, "height": height, "objects": objects})

    def _object(self, ann: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
        obj = {"id": ann["id"], "category_id": ann["category_id"], "bbox": [float(v) for v in ann["bbox"]],
               "iscrowd": ann["iscrowd"]}
        segm = ann.get("segmentation")
        if segm:
            try:
                obj["segmentation"] = masks.to_rle(segm, image["height"], image["width"])
            except (ValueError, TypeError) as exc:
                raise SpecError(f"{self.json_path}: annotation {ann['id']}: bad segmentation ({exc})",
                                _HINT) from exc
        if ann.get("area") is not None:
            obj["area"] = float(ann["area"])
        elif "segmentation" in obj:
            obj["area"] = masks.rle_area_and_box(obj["segmentation"])[0]
        return obj


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid JSON ({exc})", "label_filter must select a COCO instances JSON") from exc
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a COCO instances JSON is an object, got {type(doc).__name__}", _HINT)
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise SpecError(f"{path}: no {key!r} list", "a COCO instances JSON has images, annotations "
                            "and categories")
    return doc


def _entries(doc: dict[str, Any], key: str, path: Path, required: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The entries of ``doc[key]``, each checked for its required fields and an integer id, ids unique."""
    seen: set[int] = set()
    for i, entry in enumerate(doc[key]):
        where = f"{path}: {key}[{i}]"
        if not isinstance(entry, dict):
            raise SpecError(f"{where} is not an object", _HINT)
        missing = [k for k in required if k not in entry]
        if missing:
            raise SpecError(f"{where} has no {', '.join(repr(k) for k in missing)}", _HINT)
        if not _is_int(entry["id"]):
            raise SpecError(f"{where}: id {entry['id']!r} is not an integer", _HINT)
        if entry["id"] in seen:
            raise SpecError(f"{path}: {key} id {entry['id']} occurs twice", "ids must be unique")
        seen.add(entry["id"])
        yield entry


def _categories(doc: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    cats = sorted(({"id": c["id"], "name": str(c["name"])} for c in _entries(doc, "categories", path, ("id", "name"))),
                  key=lambda c: c["id"])
    if not cats:
        raise SpecError(f"{path}: no categories", _HINT)
    if cats[0]["id"] < 1:
        raise SpecError(f"{path}: category id {cats[0]['id']} is below 1", "COCO reserves 0; number categories from 1")
    names = [c["name"] for c in cats]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}: category name {next(n for n in names if names.count(n) > 1)!r} occurs twice",
                        "category names must be unique")
    return cats


def _images(doc: dict[str, Any], path: Path) -> dict[int, dict[str, Any]]:
    images = {}
    for image in _entries(doc, "images", path, ("id", "file_name", "width", "height")):
        if not (_is_int(image["width"]) and _is_int(image["height"]) and image["width"] > 0 and image["height"] > 0):
            raise SpecError(f"{path}: image {image['id']}: width and height must be positive integers", _HINT)
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise SpecError(f"{path}: image {image['id']}: file_name must be a non-empty string", _HINT)
        images[image["id"]] = image
    if not images:
        raise SpecError(f"{path}: no images", _HINT)
    return dict(sorted(images.items()))  # image id order fixes the dataset's version


def _annotations(doc: dict[str, Any], path: Path, images: dict[int, dict[str, Any]],
                 cat_ids: set[int]) -> dict[int, list[dict[str, Any]]]:
    by_image: dict[int, list[dict[str, Any]]] = {}
    with_segm, without_segm = None, None
    for ann in _entries(doc, "annotations", path, ("id", "image_id", "category_id", "bbox")):
        where = f"{path}: annotation {ann['id']}"
        if ann["image_id"] not in images:
            raise SpecError(f"{where}: image_id {ann['image_id']!r} is not in images", _HINT)
        if ann["category_id"] not in cat_ids:
            raise SpecError(f"{where}: category_id {ann['category_id']!r} is not in categories",
                            f"known ids: {sorted(cat_ids)}")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(masks.is_finite_number(v) for v in bbox)
                and bbox[2] > 0 and bbox[3] > 0):
            raise SpecError(f"{where}: bbox {bbox!r} is not [x, y, w, h] with w, h > 0", _HINT)
        area = ann.get("area")
        if area is not None and not (masks.is_finite_number(area) and area >= 0):
            raise SpecError(f"{where}: area {area!r} is not a number >= 0", _HINT)
        iscrowd = ann.setdefault("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            raise SpecError(f"{where}: iscrowd {iscrowd!r} is not 0 or 1", _HINT)
        # boxes-only exports write "segmentation": []; an empty one counts as none
        if ann.get("segmentation"):
            with_segm = with_segm or ann["id"]
        else:
            without_segm = without_segm or ann["id"]
        by_image.setdefault(ann["image_id"], []).append(ann)
    if with_segm is not None and without_segm is not None:
        raise SpecError(f"{path}: annotation {with_segm} has a segmentation but annotation {without_segm} has none",
                        "give every annotation a segmentation (instance masks) or none (boxes only)")
    for anns in by_image.values():
        anns.sort(key=lambda a: a["id"])
    return by_image


class _FileIndex:
    """Selected files by every tail of their path below data_dir, to match COCO ``file_name``s."""

    def __init__(self, data_dir: Path, data_files: list[Path]):
        self.data_dir = data_dir
        self.by_tail: dict[tuple[str, ...], list[Path]] = {}
        for file in (f for f in data_files if f.is_file()):
            parts = file.relative_to(data_dir).parts
            for k in range(1, len(parts) + 1):
                self.by_tail.setdefault(parts[-k:], []).append(file)

    def find(self, file_name: str, where: str) -> Path:
        parts = PurePosixPath(file_name).parts
        found = [] if PurePosixPath(file_name).is_absolute() or ".." in parts else self.by_tail.get(parts, [])
        if not found:
            raise SpecError(f"{where}: file {file_name!r} is not among the images data_filter selects under "
                            f"{self.data_dir}", "add the image, or widen data_filter to select it")
        if len(found) > 1:
            raise SpecError(f"{where}: file {file_name!r} matches {len(found)} selected images "
                            f"({found[0]}, {found[1]})", "narrow data_filter to the JSON's image folder")
        return found[0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
