"""Image files for the built-in sources: size and format read from the header (never a full decode)."""

from __future__ import annotations

import io
from pathlib import Path

from assay.errors import SpecError

#: PIL's format name -> the extension a sample stores the image under (``assay.shards.IMAGE_EXTENSIONS``);
#: MPO is the JPEG that phone cameras write (a JPEG with more pictures after it): PIL reads its first.
FORMAT_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif",
                     "GIF": "gif"}


def _header(data: bytes, path: Path) -> tuple[str | None, tuple[int, int]]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format, img.size
    except Image.DecompressionBombError as exc:
        raise SpecError(f"{path}: {exc}", "an image this large is almost certainly broken or hostile") from exc
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: not a readable image ({len(data)} bytes: {exc})",
                        "replace the file, or drop it with data_filter") from exc


def image_size(data: bytes, path: Path) -> tuple[int, int]:
    """(width, height) from the image header, refusing empty, unreadable and decompression-bomb files."""
    return _header(data, path)[1]


def image_info(data: bytes, path: Path) -> tuple[str, int, int]:
    """(extension, width, height): the extension is the content's format, whatever the file is named."""
    fmt, (width, height) = _header(data, path)
    ext = FORMAT_EXTENSIONS.get(fmt or "")
    if ext is None:
        raise SpecError(f"{path}: {fmt} images are not supported",
                        f"convert it to one of: {', '.join(FORMAT_EXTENSIONS)}")
    return ext, width, height


def read_image(path: Path) -> tuple[bytes, str, int, int]:
    """(bytes, extension, width, height) of an image file, checked as ``image_info`` checks it."""
    data = path.read_bytes()
    return (data, *image_info(data, path))
