"""Make AugLy 1.0 work on current NumPy and Pillow, and list its usable fonts and emoji.

AugLy 1.0 uses ``np.float`` (removed in NumPy 1.24) in ``perspective_transform`` and
``FreeTypeFont.getsize_multiline`` (removed in Pillow 10) in ``meme_format``. ``install()`` adds
both back, computed the same way from today's APIs. AugLy's font list names one file its wheel
does not ship, so fonts are found by listing the folder instead.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _getsize_multiline(font: ImageFont.FreeTypeFont, text: str, *args, **kwargs) -> tuple[int, int]:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return right - left, bottom - top


@functools.cache
def install() -> None:
    """Idempotently add the shims, then import AugLy's image module."""
    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]
    if not hasattr(ImageFont.FreeTypeFont, "getsize_multiline"):
        ImageFont.FreeTypeFont.getsize_multiline = _getsize_multiline  # type: ignore[attr-defined]
    import augly.image  # noqa: F401


@functools.cache
def font_paths() -> tuple[Path, ...]:
    """AugLy's Noto/Google fonts that are present, each with its ``.pkl`` charset."""
    from augly.utils import FONTS_DIR

    return tuple(
        p for p in sorted(Path(FONTS_DIR).glob("*.ttf")) if p.with_suffix(".pkl").is_file()
    )


@functools.cache
def emoji_paths() -> tuple[Path, ...]:
    """Every Twemoji PNG shipped inside AugLy."""
    from augly.utils import EMOJI_DIR

    return tuple(sorted(Path(EMOJI_DIR).rglob("*.png")))


@functools.cache
def font_charset(path: Path) -> tuple[str, ...]:
    """The characters a font can draw (AugLy's pickled charset next to the .ttf)."""
    import pickle

    with open(path.with_suffix(".pkl"), "rb") as handle:
        chars = pickle.load(handle)  # AugLy's own asset, shipped in its wheel
    chars = (chr(c) if isinstance(c, int) else str(c) for c in chars)
    return tuple(c for c in chars if c.isprintable())  # '\r' and friends break text layout
