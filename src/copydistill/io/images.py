"""Listing and robust decoding of image files.

Every image comes out as an 8-bit RGB ``PIL.Image`` with its EXIF orientation applied, whatever
its mode on disk (palette with transparency, LA, RGBA, CMYK, 16-bit grey, ...). Files that cannot
be used raise a typed :class:`~copydistill.errors.ImageError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from copydistill.errors import (
    DataLayoutError,
    DecompressionBombError,
    EmptyImageFileError,
    NotAnImageError,
    TruncatedImageError,
    UnreadableFileError,
    UnreadableFolderError,
)

try:  # iPhone photos: HEIC/HEIF through pillow-heif (AVIF is Pillow's own from 11.3 on)
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
except ImportError:  # pragma: no cover - a dependency; without it HEIC files are not listed
    HEIF_EXTENSIONS = frozenset()

AVIF_EXTENSIONS = frozenset({".avif"}) if features.check("avif") else frozenset()
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
) | HEIF_EXTENSIONS | AVIF_EXTENSIONS
DEFAULT_MAX_PIXELS = 178_956_970  # the same default as Pillow's hard limit (2 x MAX_IMAGE_PIXELS)
# ``load_image(max_pixels=...)`` is the one limit that applies; Pillow's global cap would otherwise
# refuse images above 2 x its own limit whatever the caller asked for.
Image.MAX_IMAGE_PIXELS = None
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """All image files under ``folder`` (by extension, hidden files skipped), sorted by path."""
    return scan_images(folder, recursive)[0]


def scan_images(folder: str | Path, recursive: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the image files under ``folder``, sorted; the sub-folders that could not be listed, with
    why). Symbolic links to folders are followed once; a link loop is not walked twice."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataLayoutError(f"{folder}: not a folder. Pass a folder that holds images.")
    found: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()

    def failed(err: OSError) -> None:
        unreadable.append((Path(err.filename), err.strerror or str(err)))

    for top, dirs, files in os.walk(folder, onerror=failed, followlinks=True):
        try:
            stat = os.stat(top)
        except OSError as err:
            failed(err)
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:  # a symbolic link back to a folder already walked
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in files:
            path = Path(top) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(path)
    for path, reason in unreadable:
        if path == folder:
            raise DataLayoutError(f"{folder}: cannot list the folder ({reason}); check its permissions")
    return sorted(found), sorted(unreadable)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an RGB image with EXIF orientation applied.

    Raises EmptyImageFileError, NotAnImageError, TruncatedImageError or DecompressionBombError.
    """
    path = Path(path)
    if path.is_dir():  # a folder listed because it could not be read (scan_images)
        raise UnreadableFolderError(path, f"{_listing_error(path)}; the images in it were not read")
    try:
        size = path.stat().st_size
        handle = open(path, "rb")
    except OSError as err:
        raise UnreadableFileError(path, f"cannot read the file ({err.strerror or err})") from err
    if size == 0:
        handle.close()
        raise EmptyImageFileError(path, "the file has 0 bytes; re-copy or delete it")
    return _decode(handle, path, max_pixels)


def load_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``load_image`` for bytes in memory (an upload); ``name`` names it in errors."""
    import io

    if not data:
        raise EmptyImageFileError(Path(name), "the upload has 0 bytes")
    return _decode(io.BytesIO(data), Path(name), max_pixels)


def _decode(handle, path: Path, max_pixels: int) -> Image.Image:
    """Decode an open binary file (closed after) into RGB, refusing more than ``max_pixels``."""
    try:
        with warnings.catch_warnings(), handle:
            # our own max_pixels decides below; Pillow still refuses > 2x its limit outright
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as opened:
                if opened.width * opened.height > max_pixels:
                    raise DecompressionBombError(
                        path,
                        f"{opened.width}x{opened.height} pixels exceeds the limit of {max_pixels}",
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
                return to_rgb(image)
    except DecompressionBombError:
        raise
    except Image.DecompressionBombError as err:
        raise DecompressionBombError(path, str(err)) from err
    except UnidentifiedImageError as err:
        raise NotAnImageError(path, "the file is not in an image format Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise TruncatedImageError(path, f"decoding failed ({err})") from err


def _listing_error(folder: Path) -> str:
    try:
        os.listdir(folder)
    except OSError as err:
        return f"cannot list the folder ({err.strerror or err})"
    return "the folder could not be listed while searching for images"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        return Image.fromarray(array.astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, BACKGROUND)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")
