"""PennFudanPed for the demo: find it, download it (every file checked against known digests), or stand in
for it with a small synthetic set in the same layout. Not part of assay: the product reads datasets, it
does not fetch them."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from assay.errors import IntegrityError, UnsafeArchiveError

HOMEPAGE = "https://www.cis.upenn.edu/~jshi/ped_html/"
ZIP_URL = HOMEPAGE + "PennFudanPed.zip"
#: sha256 of the sorted ``sha256  relative/path`` lines of the 512 data files (Annotation/, PNGImages/,
#: PedMasks/, readme.txt, added-object-list.txt): checks a download file by file.
TREE_SHA256 = "484b0ba4613b47c1f9bdfb721bc146dcb0e326e48df0155844dbfee376dbb444"


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


def synthesize(dest: Path, count: int = 60, seed: int = 0, names: Sequence[str] | None = None,
               scale: float = 1.0) -> Path:
    """A small synthetic set in the PennFudanPed layout: upright textured 'pedestrians' on noisy ground.

    For machines with neither the real data nor internet; its metrics say nothing about real pedestrians.
    ``names`` are the images' file stems (default SynthPed00001, ...: ``count`` of them); the tests pass
    PennFudanPed's own, so that its 17-image test split and sample ids hold without the real files, and
    ``scale`` about 1.6 for images of about its size (the same shards at a given volume_size).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(dest) / "PennFudanSynthetic"
    for sub in ("PNGImages", "PedMasks", "Annotation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in names or [f"SynthPed{i:05d}" for i in range(1, count + 1)]:
        h, w = int(scale * rng.integers(180, 260)), int(scale * rng.integers(240, 340))
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
        Image.fromarray(image.astype(np.uint8)).save(root / "PNGImages" / f"{name}.png")
        Image.fromarray(mask).save(root / "PedMasks" / f"{name}_mask.png")
        lines = [f"Image size (X x Y x C) : {w} x {h} x 3"] + [
            f'Bounding box for object {k} "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : ({a}, {b}) - ({c}, {d})'
            for k, (a, b, c, d) in enumerate(boxes, 1)]
        (root / "Annotation" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root
