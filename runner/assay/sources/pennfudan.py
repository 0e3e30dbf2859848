"""The Penn-Fudan pedestrian dataset: built-in sample source, locating, downloading, and a synthetic stand-in.

Layout (as in the original zip): ``PNGImages/X.png``, ``PedMasks/X_mask.png`` (pixel value k > 0 is
pedestrian k), ``Annotation/X.txt``. Ground truth is derived from the masks, COCO style: one object
per instance with its RLE mask, the mask's bounding box and area, category 1 ("pedestrian").
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from assay.errors import IntegrityError, SpecError, UnsafeArchiveError
from assay.shards import Sample
from assay.sources.images import image_size

HOMEPAGE = "https://www.cis.upenn.edu/~jshi/ped_html/"
ZIP_URL = HOMEPAGE + "PennFudanPed.zip"
#: sha256 of the sorted ``sha256  relative/path`` lines of the 512 data files (Annotation/, PNGImages/,
#: PedMasks/, readme.txt, added-object-list.txt): checks a download file by file.
TREE_SHA256 = "484b0ba4613b47c1f9bdfb721bc146dcb0e326e48df0155844dbfee376dbb444"
LABEL_SCHEMA = {"task": "detection", "categories": [{"id": 1, "name": "pedestrian"}]}
#: Starwhale's PennFudanPed filters: the 17 images whose number ends in 6 form the test split.
TEST_FILTER = "PNGImages/*6.png"
TEST_LABEL_FILTER = "PedMasks/*6_mask.png"


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


def cache_dir() -> Path:
    return Path(os.environ.get("ASSAY_CACHE_DIR") or Path.home() / ".cache" / "assay") / "data"


def is_pennfudan(path: Path) -> bool:
    return all((path / d).is_dir() for d in ("PNGImages", "PedMasks"))


def tree_digest(root: Path) -> str:
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in {"PNGImages", "PedMasks", "Annotation"} or rel in {"readme.txt",
                                                                                 "added-object-list.txt"}:
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}\n")
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def download(dest: Path, url: str = ZIP_URL, timeout: float = 60) -> Path:
    """Download and unpack the dataset into ``dest/PennFudanPed``, checking every file's digest."""
    dest = Path(dest)
    target = dest / "PennFudanPed"
    if is_pennfudan(target) and tree_digest(target) == TREE_SHA256:
        return target
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed https URL
        data = response.read()
    staging = dest / ".PennFudanPed.partial"
    _safe_unzip(data, staging)
    root = staging / "PennFudanPed"
    if tree_digest(root) != TREE_SHA256:
        raise IntegrityError(f"the download from {url} does not match the known PennFudanPed files",
                             "pass --data PATH to a copy you trust")
    os.replace(root, target)
    return target


def _safe_unzip(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if root != target and root not in target.parents:
                raise UnsafeArchiveError(f"zip member {info.filename!r} would escape {root}")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(f"zip member {info.filename!r} is a symbolic link")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))


def synthesize(dest: Path, count: int = 60, seed: int = 0) -> Path:
    """A small synthetic set in the PennFudanPed layout: upright textured 'pedestrians' on noisy ground.

    For machines with neither the real data nor internet; its metrics say nothing about real pedestrians.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(dest) / "PennFudanSynthetic"
    for sub in ("PNGImages", "PedMasks", "Annotation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        h, w = int(rng.integers(180, 260)), int(rng.integers(240, 340))
        image = (rng.normal(120, 25, (h, w, 3))).clip(0, 255)
        mask = np.zeros((h, w), np.uint8)
        boxes = []
        for inst in range(1, int(rng.integers(1, 4)) + 1):
            ph, pw = int(rng.integers(h // 3, int(h * 0.8))), 0
            pw = max(8, ph // 3)
            y0, x0 = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
            yy, xx = np.mgrid[0:ph, 0:pw]
            body = ((xx - pw / 2) / (pw / 2)) ** 2 + ((yy - ph / 2) / (ph / 2)) ** 2 <= 1.0
            region = mask[y0:y0 + ph, x0:x0 + pw]
            body &= region == 0
            region[body] = inst
            color = rng.integers(0, 255, 3)
            image[y0:y0 + ph, x0:x0 + pw][body] = color
            boxes.append((x0 + 1, y0 + 1, x0 + pw, y0 + ph))
        name = f"SynthPed{i:05d}"
        Image.fromarray(image.astype(np.uint8)).save(root / "PNGImages" / f"{name}.png")
        Image.fromarray(mask).save(root / "PedMasks" / f"{name}_mask.png")
        lines = [f"Image size (X x Y x C) : {w} x {h} x 3"] + [
            f'Bounding box for object {k} "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : ({a}, {b}) - ({c}, {d})'
            for k, (a, b, c, d) in enumerate(boxes, 1)]
        (root / "Annotation" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root
