"""References that arrive as bytes (uploads to the service, PIL images given to the Python API):
stored in the index's own folder, then indexed by the ordinary ``add_to_index``.

Each image is written atomically into ``INDEX/uploads/`` under a name made of its (sanitised)
file name and the first 12 hex digits of its SHA-256; the same bytes sent twice, under any name,
are one file.
Storing comes first and indexing second: if the process is killed between the two, or during
the add, the files are on disk and the next add of the folder (``add_stored``, which the service
runs at start-up) indexes them; the previous generation of the index stays valid throughout.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from copydistill.io.atomic import atomic_write_bytes
from copydistill.io.images import IMAGE_EXTENSIONS, list_images
from copydistill.models.descriptor import Descriptor
from copydistill.search.index import BuildResult, add_to_index
from copydistill.search.store import load_index

UPLOADS_DIR = "uploads"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
                     "TIFF": ".tif", "HEIF": ".heic", "AVIF": ".avif", "PPM": ".ppm"}


@dataclass(frozen=True)
class Upload:
    name: str  # as the client named it (only its last component is used)
    data: bytes
    format: str | None = None  # Pillow's format name, when the caller decoded it already


def stored_name(upload: Upload) -> str:
    """``<safe stem>-<sha256[:12]><ext>``: no folders, no dots first, an image extension."""
    base = Path(upload.name.replace("\\", "/")).name
    stem, ext = Path(base).stem, Path(base).suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        ext = FORMAT_EXTENSIONS.get(upload.format or "", ".png")
    stem = _UNSAFE.sub("_", stem).strip("._")[:60] or "image"
    return f"{stem}-{hashlib.sha256(upload.data).hexdigest()[:12]}{ext}"


def store_uploads(root: str | Path, uploads: list[Upload]) -> list[Path]:
    """Write each upload into ``root/uploads`` (atomically; an existing same-content file is kept)."""
    folder = Path(root) / UPLOADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for upload in uploads:
        path = folder / stored_name(upload)
        digest = path.stem.rsplit("-", 1)[1]
        same = sorted(p for p in folder.glob(f"*-{digest}.*") if p.is_file() and p.read_bytes() == upload.data)
        if same:  # these bytes are stored already (under another name): one reference
            path = same[0]
        else:
            atomic_write_bytes(path, upload.data)
        paths.append(path.resolve())
    return paths


def image_upload(image: Image.Image, name: str = "image.png") -> Upload:
    """A PIL image as a lossless PNG upload."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Upload(name if name.lower().endswith(".png") else f"{Path(name).stem}.png",
                  buffer.getvalue(), "PNG")


def pending(root: str | Path) -> list[Path]:
    """Stored uploads the index does not hold yet (left by an add that did not finish)."""
    folder = Path(root) / UPLOADS_DIR
    if not folder.is_dir():
        return []
    known = set(load_index(root).paths)
    return [p for p in list_images(folder) if str(p.resolve()) not in known]


def add_stored(root: str | Path, descriptor: Descriptor, progress: bool = False) -> BuildResult:
    """Index every stored upload not indexed yet (under the index's writer lock)."""
    return add_to_index(root, [Path(root) / UPLOADS_DIR], descriptor, progress=progress)


def add_uploads(root: str | Path, uploads: list[Upload], descriptor: Descriptor,
                progress: bool = False) -> tuple[BuildResult, list[Path]]:
    """Store ``uploads`` in the index folder and index them; (the add's result, their paths)."""
    paths = store_uploads(root, uploads)
    return add_stored(root, descriptor, progress), paths
