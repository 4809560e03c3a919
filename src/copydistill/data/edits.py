"""DISC21-style edits of a query image, each recorded with its parameters.

The catalogue follows what DISC21's queries show: crops, overlays of text, emoji and other images,
screenshots and memes, colour changes, blur, JPEG, rotations, flips, padding, perspective,
pixelisation and noise, usually chained 2–4 deep; a share of queries is made hard on purpose
(small crops, the copy shrunk onto another image). AugLy does the heavy lifting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from copydistill.augment import augly_compat

augly_compat.install()
import augly.image.functional as A  # noqa: E402
from augly.utils import SCREENSHOT_TEMPLATES_DIR  # noqa: E402

OtherImage = Callable[[np.random.Generator], tuple[str, Image.Image]]


@dataclass(frozen=True)
class Edit:
    name: str
    weight: float
    apply: Callable[[Image.Image, np.random.Generator, OtherImage, bool], tuple[Image.Image, dict]]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _crop(img, rng, other, hard):
    area = rng.uniform(0.12, 0.3) if hard else rng.uniform(0.3, 0.85)
    aspect = np.exp(rng.uniform(-0.4, 0.4))
    w = min(1.0, np.sqrt(area * aspect))
    h = min(1.0, area / w)
    x1, y1 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    p = {"x1": round(x1, 4), "y1": round(y1, 4), "x2": round(x1 + w, 4), "y2": round(y1 + h, 4)}
    return A.crop(img, **p), p


def _overlay_text(img, rng, other, hard):
    fonts = augly_compat.font_paths()
    font = fonts[rng.integers(len(fonts))]
    n_chars = len(augly_compat.font_charset(font))
    p = {
        "font": font.name,
        "text": [int(i) for i in rng.integers(0, n_chars, int(rng.integers(3, 15)))],
        "font_size": round(rng.uniform(0.08, 0.3), 3),
        "opacity": round(rng.uniform(0.5, 1.0), 3),
        "color": _colour(rng),
        "x_pos": round(rng.uniform(0, 0.6), 3),
        "y_pos": round(rng.uniform(0, 0.8), 3),
    }
    args = {k: v for k, v in p.items() if k != "font"}
    return A.overlay_text(img, font_file=str(font), **args), p


def _overlay_emoji(img, rng, other, hard):
    emojis = augly_compat.emoji_paths()
    emoji = emojis[rng.integers(len(emojis))]
    p = {
        "emoji": emoji.stem,
        "emoji_size": round(rng.uniform(0.15, 0.45), 3),
        "opacity": round(rng.uniform(0.7, 1.0), 3),
        "x_pos": round(rng.uniform(0, 0.7), 3),
        "y_pos": round(rng.uniform(0, 0.7), 3),
    }
    args = {k: v for k, v in p.items() if k != "emoji"}
    return A.overlay_emoji(img, emoji_path=str(emoji), **args), p


def _onto_background(img, rng, other, hard):
    name, background = other(rng)
    p = {
        "background": name,
        "overlay_size": round(rng.uniform(0.4, 0.55) if hard else rng.uniform(0.55, 0.9), 3),
        "opacity": round(rng.uniform(0.8, 1.0), 3),
        "x_pos": round(rng.uniform(0, 0.5), 3),
        "y_pos": round(rng.uniform(0, 0.5), 3),
    }
    args = {k: v for k, v in p.items() if k != "background"}
    return A.overlay_onto_background_image(img, background_image=background, **args), p


def _overlay_image(img, rng, other, hard):
    name, overlay = other(rng)
    p = {
        "overlay": name,
        "overlay_size": round(rng.uniform(0.2, 0.5), 3),
        "opacity": round(rng.uniform(0.6, 1.0), 3),
        "x_pos": round(rng.uniform(0, 0.6), 3),
        "y_pos": round(rng.uniform(0, 0.6), 3),
    }
    args = {k: v for k, v in p.items() if k != "overlay"}
    return A.overlay_image(img, overlay=overlay, max_visible_opacity=1.0, **args), p


def _screenshot(img, rng, other, hard):
    template = ("web.png", "mobile.png")[int(rng.integers(2))]
    p = {"template": template}
    out = A.overlay_onto_screenshot(
        img, template_filepath=f"{SCREENSHOT_TEMPLATES_DIR}/{template}", crop_src_to_fit=True
    )
    return out, p


def _meme(img, rng, other, hard):
    words = ["LOL", "WOW", "MONDAY", "ME TOO", "SO TRUE", "NOPE", "OK"]
    p = {
        "text": words[int(rng.integers(len(words)))],
        "caption_height": int(rng.integers(40, 120)),
        "meme_bg_color": _colour(rng),
        "text_color": _colour(rng),
    }
    return A.meme_format(img, **p), p


def _colour_jitter(img, rng, other, hard):
    p = {
        "brightness_factor": round(rng.uniform(0.5, 1.6), 3),
        "contrast_factor": round(rng.uniform(0.5, 1.6), 3),
        "saturation_factor": round(rng.uniform(0.0, 2.0), 3),
    }
    return A.color_jitter(img, **p), p


def _grayscale(img, rng, other, hard):
    return A.grayscale(img), {}


def _blur(img, rng, other, hard):
    p = {"radius": round(rng.uniform(1.0, 4.0), 3)}
    return A.blur(img, **p), p


def _jpeg(img, rng, other, hard):
    p = {"quality": int(rng.integers(5, 60))}
    return A.encoding_quality(img, **p), p


def _rotate(img, rng, other, hard):
    degrees = float(rng.choice([90, 180, 270])) if rng.random() < 0.3 else round(rng.uniform(-35, 35), 2)
    p = {"degrees": degrees}
    return A.rotate(img, **p), p


def _hflip(img, rng, other, hard):
    return A.hflip(img), {}


def _vflip(img, rng, other, hard):
    return A.vflip(img), {}


def _pad(img, rng, other, hard):
    p = {
        "w_factor": round(rng.uniform(0.05, 0.4), 3),
        "h_factor": round(rng.uniform(0.05, 0.4), 3),
        "color": _colour(rng),
    }
    return A.pad(img, **p), p


def _perspective(img, rng, other, hard):
    p = {"sigma": round(rng.uniform(15, 50), 2), "seed": int(rng.integers(0, 2**31 - 1))}
    return A.perspective_transform(img, **p), p


def _pixelize(img, rng, other, hard):
    p = {"ratio": round(rng.uniform(0.15, 0.5), 3)}
    return A.pixelization(img, **p), p


def _stripes(img, rng, other, hard):
    p = {
        "line_width": round(rng.uniform(0.1, 0.5), 3),
        "line_color": _colour(rng),
        "line_angle": round(rng.uniform(-90, 90), 2),
        "line_density": round(rng.uniform(0.1, 0.5), 3),
        "line_opacity": round(rng.uniform(0.3, 0.8), 3),
    }
    return A.overlay_stripes(img, **p), p


def _noise(img, rng, other, hard):
    p = {"var": round(rng.uniform(0.002, 0.03), 4), "seed": int(rng.integers(0, 2**31 - 1))}
    return A.random_noise(img, **p), p


def _skew(img, rng, other, hard):
    p = {"skew_factor": round(rng.uniform(-0.5, 0.5), 3), "axis": int(rng.integers(2))}
    return A.skew(img, **p), p


CATALOGUE: tuple[Edit, ...] = (
    Edit("crop", 3.0, _crop),
    Edit("overlay_text", 2.0, _overlay_text),
    Edit("overlay_emoji", 2.0, _overlay_emoji),
    Edit("overlay_onto_background", 1.5, _onto_background),
    Edit("overlay_image", 1.0, _overlay_image),
    Edit("screenshot", 0.6, _screenshot),
    Edit("meme_format", 0.5, _meme),
    Edit("color_jitter", 2.0, _colour_jitter),
    Edit("grayscale", 0.7, _grayscale),
    Edit("blur", 1.5, _blur),
    Edit("jpeg", 1.5, _jpeg),
    Edit("rotate", 1.0, _rotate),
    Edit("hflip", 1.0, _hflip),
    Edit("vflip", 0.3, _vflip),
    Edit("pad", 0.8, _pad),
    Edit("perspective", 0.8, _perspective),
    Edit("pixelization", 0.7, _pixelize),
    Edit("overlay_stripes", 0.4, _stripes),
    Edit("noise", 0.5, _noise),
    Edit("skew", 0.4, _skew),
)
BY_NAME = {e.name: e for e in CATALOGUE}
HARD_EDITS = ("crop", "overlay_onto_background")
CHAIN_LENGTHS = (1, 2, 3, 4)
CHAIN_PROBS = (0.15, 0.35, 0.3, 0.2)


def random_chain(rng: np.random.Generator, hard: bool) -> list[Edit]:
    """A chain of distinct edits; a hard chain starts with a hard crop or background overlay."""
    length = int(rng.choice(CHAIN_LENGTHS, p=CHAIN_PROBS))
    names = [e.name for e in CATALOGUE]
    weights = np.array([e.weight for e in CATALOGUE])
    chosen: list[str] = []
    if hard:
        chosen.append(HARD_EDITS[int(rng.integers(len(HARD_EDITS)))])
        length = max(length, 3)
    while len(chosen) < length:
        p = weights * np.array([n not in chosen for n in names])
        chosen.append(names[int(rng.choice(len(names), p=p / p.sum()))])
    return [BY_NAME[n] for n in chosen]


def apply_chain(
    image: Image.Image, chain: list[Edit], rng: np.random.Generator, other: OtherImage, hard: bool
) -> tuple[Image.Image, list[dict]]:
    """Apply ``chain`` in order; returns the edited RGB image and one record per edit."""
    records = []
    for edit in chain:
        image, params = edit.apply(image, rng, other, hard)
        image = image.convert("RGB")
        records.append({"op": edit.name, **params})
    return image, records
