"""Image records: an id and a file. ``folder_records`` is the one folder -> records rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copydistill.errors import DataLayoutError
from copydistill.io.images import IMAGE_EXTENSIONS, scan_images


@dataclass(frozen=True)
class ImageRecord:
    id: str
    path: Path


def folder_records(folder: str | Path) -> list[ImageRecord]:
    """The one id rule for a folder of images: id = the file's path relative to ``folder``
    (``2024/IMG_0001.jpg``), so ids are always unique; paths are absolute.

    Sub-folders that cannot be listed come last as records of the folder itself: loading one
    raises ``UnreadableFolderError``, so it is skipped (and listed) like an unreadable file.
    """
    folder = Path(folder)
    root = folder.resolve()
    files, unreadable = scan_images(folder)
    records = [ImageRecord(p.relative_to(folder).as_posix(), root / p.relative_to(folder)) for p in files]
    return records + [ImageRecord(p.relative_to(folder).as_posix() + "/", root / p.relative_to(folder))
                      for p, _ in unreadable]


def keyed_by_path(records: list[ImageRecord]) -> list[ImageRecord]:
    """The same files with their absolute path as id (what resumable caches are keyed by)."""
    return [ImageRecord(str(r.path), r.path) for r in records]


def no_images_error(folder: Path) -> DataLayoutError:
    return DataLayoutError(
        f"{folder}: no images found (searched recursively for "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}). Pass the folder that holds your images."
    )
