"""SSCD's augmentation settings SIMCLR, STRONG_BLUR and ADVANCED (method.md §1.3), on PIL images.

Order, probabilities and ranges follow §1.3's tables. Text and emoji overlays use AugLy's fonts and
Twemoji (with the shims of ``augly_compat``; the font missing from AugLy's wheel is never chosen).
Views come out as uint8 CHW tensors: normalisation belongs to the model (``PixelInput``), and the
int8 ONNX teacher takes uint8 pixels.

Randomness: every view is drawn from an explicit ``random.Random`` and a torch ``Generator``
seeded by the caller (``seeded_view``), so a (seed, epoch, index, copy) always gives the same view.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageFont
from torchvision.transforms import functional as TF
from torchvision.transforms import v2

from copydistill.augment import augly_compat

SETTINGS = ("SIMCLR", "STRONG_BLUR", "ADVANCED")


def _random_resized_crop(img: Image.Image, size: int, rng: random.Random,
                         scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop algorithm (10 tries, then a centre crop), driven by ``rng``."""
    width, height = img.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def _colour_jitter(img: Image.Image, rng: random.Random, b=0.8, c=0.8, s=0.8, h=0.2) -> Image.Image:
    """ColorJitter(b, c, s, h): the four adjustments in random order (as torchvision)."""
    ops: list[Callable[[Image.Image], Image.Image]] = [
        lambda x: TF.adjust_brightness(x, rng.uniform(max(0, 1 - b), 1 + b)),
        lambda x: TF.adjust_contrast(x, rng.uniform(max(0, 1 - c), 1 + c)),
        lambda x: TF.adjust_saturation(x, rng.uniform(max(0, 1 - s), 1 + s)),
        lambda x: TF.adjust_hue(x, rng.uniform(-h, h)),
    ]
    rng.shuffle(ops)
    for op in ops:
        img = op(img)
    return img


def _overlay_text(img: Image.Image, rng: random.Random) -> Image.Image:
    """§1.3 ADVANCED #3: random-charset text from a random AugLy font, skipped if nothing fits."""
    import augly.image.functional as A

    fonts = augly_compat.font_paths()
    font_path = fonts[rng.randrange(len(fonts))]
    charset = augly_compat.font_charset(font_path)
    width, height = img.size
    font_size = rng.uniform(0.1, 0.3)
    px = max(1, int(min(width, height) * font_size))
    try:
        font = ImageFont.truetype(str(font_path), px)
        indices = [rng.randrange(len(charset)) for _ in range(100)]
        length = 0
        while length < len(indices):  # longest prefix that fits inside the image
            bbox = font.getbbox("".join(charset[i] for i in indices[: length + 1]))
            if bbox[2] - bbox[0] > width or bbox[3] - bbox[1] > height:
                break
            length += 1
        if length == 0:
            return img
        n = rng.randint(1, length)
        bbox = font.getbbox("".join(charset[i] for i in indices[:n]))
        fx, fy = rng.uniform(0, 1), rng.uniform(0, 1)
        x = fx * max(0, width - (bbox[2] - bbox[0])) / width
        y = fy * max(0, height - (bbox[3] - bbox[1])) / height
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        return A.overlay_text(img, text=indices[:n], font_file=str(font_path), font_size=font_size,
                              opacity=rng.uniform(0.1, 1.0), color=colour, x_pos=x, y_pos=y).convert("RGB")
    except (OSError, ValueError, IndexError, KeyError, RuntimeError):  # glyph/layout errors: skipped, as SSCD does
        return img


def _overlay_emoji(img: Image.Image, rng: random.Random) -> Image.Image:
    """§1.3 ADVANCED #4: a random Twemoji, scale U(0.1, 0.5) of the largest that fits."""
    import augly.image.functional as A

    emojis = augly_compat.emoji_paths()
    emoji = emojis[rng.randrange(len(emojis))]
    size = rng.uniform(0.1, 0.5)  # AugLy sizes the (square) emoji relative to the image height
    width, height = img.size
    size = size * min(1.0, width / height)
    x = rng.uniform(0, 1) * (1 - size * height / width)
    y = rng.uniform(0, 1) * (1 - size)
    return A.overlay_emoji(img, emoji_path=str(emoji), opacity=rng.uniform(0.7, 1.0),
                           emoji_size=size, x_pos=max(0.0, x), y_pos=max(0.0, y)).convert("RGB")


def _jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=rng.randint(0, 100))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@dataclass(frozen=True)
class SSCDAugment:
    """One augmented view of a PIL image: ``view = SSCDAugment("ADVANCED", 224)(img, rng)``."""

    setting: str = "ADVANCED"
    size: int = 224
    crop_scale_min: float = 0.08  # RandomResizedCrop's smallest area fraction (§1.3: 0.08)

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"augmentation setting {self.setting!r}; choose from {', '.join(SETTINGS)}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min={self.crop_scale_min} must be in (0, 1]")
        if self.setting == "ADVANCED":
            augly_compat.install()

    def pre_crop(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """ADVANCED's steps before the crop, at the original resolution (§1.3 rows 1-5: flip,
        rotations, AugLy text and emoji overlays); the identity for the other settings. The GPU
        path (``augment/gpu.py``) runs these on the CPU workers and the rest batched."""
        img = img.convert("RGB")
        if self.setting == "ADVANCED":
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if rng.random() < 0.05:
                img = img.rotate(rng.choice([90, 180, 270]), resample=Image.BILINEAR)
            if rng.random() < 0.1:
                img = _overlay_text(img, rng)
            if rng.random() < 0.2:
                img = _overlay_emoji(img, rng)
            if rng.random() < 0.05:
                img = img.rotate(rng.randint(0, 359), resample=Image.BILINEAR)
        return img

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        img = self.pre_crop(img, rng)
        if self.setting == "ADVANCED":
            img = _random_resized_crop(img, self.size, rng, scale=(self.crop_scale_min, 1.0))
        else:
            img = _random_resized_crop(img, self.size, rng, scale=(self.crop_scale_min, 1.0))
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.8:
            img = _colour_jitter(img, rng)
        if rng.random() < 0.2:
            img = TF.to_grayscale(img, num_output_channels=3)
        if rng.random() < 0.5:
            low, high = (0.1, 2.0) if self.setting == "SIMCLR" else (1.0, 5.0)
            img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(low, high)))
        if self.setting == "ADVANCED" and rng.random() < 0.2:
            img = _jpeg(img, rng)
        return v2.functional.pil_to_tensor(img)


def view_rng(seed: int, epoch: int, index: int, copy: int) -> random.Random:
    """The RNG of one view: a pure function of (seed, epoch, image index, copy)."""
    state = np.random.SeedSequence([seed, epoch, index, copy]).generate_state(2)
    return random.Random(int(state[0]) << 32 | int(state[1]))
