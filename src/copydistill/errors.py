"""User-facing errors: each carries one clear message naming the file and the fix.

The CLI catches :class:`CopydistillError` and prints its message instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class CopydistillError(Exception):
    """An error the user can fix; ``str(err)`` is the whole message."""


class ImageError(CopydistillError):
    """An image file that cannot be used. ``path`` names it, ``reason`` says why."""

    kind = "unreadable image"

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {self.kind}: {reason}")


class EmptyImageFileError(ImageError):
    kind = "empty file"


class UnreadableFileError(ImageError):
    kind = "unreadable file"


class UnreadableFolderError(ImageError):
    kind = "unreadable folder"


class NotAnImageError(ImageError):
    kind = "not an image"


class TruncatedImageError(ImageError):
    kind = "truncated or corrupt image"


class DecompressionBombError(ImageError):
    kind = "image too large (decompression bomb guard)"


class ResizeTooLargeError(ImageError):
    kind = "too large once resized (memory guard)"


class DataLayoutError(CopydistillError):
    """A dataset folder that does not have the expected layout."""


class ModelSpecError(CopydistillError):
    """A model spec string or model file that cannot be loaded."""
