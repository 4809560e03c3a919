"""Procedural images with real structure (not noise): landscapes, textures, shapes, text, collages.

Each image is a pure function of its seed, so a benchmark is reproducible without shipping files.
Variety matters more than realism: copy detection must tell apart thousands of distinct scenes
that share a style, as real photos do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from copydistill.augment.augly_compat import font_paths

ASPECTS = ((4, 3), (3, 4), (16, 9), (1, 1), (3, 2), (2, 3))
WORDS = (
    "sale summer city river north light coffee garden market station open free news photo "
    "delta orbit maple harbor alpine velvet copper lunar prism echo"
).split()


def _size(rng: np.random.Generator, long_side: tuple[int, int]) -> tuple[int, int]:
    a, b = ASPECTS[rng.integers(len(ASPECTS))]
    long_px = int(rng.integers(long_side[0], long_side[1] + 1))
    return (long_px, max(16, long_px * b // a)) if a >= b else (max(16, long_px * a // b), long_px)


def fractal_noise(rng: np.random.Generator, size: tuple[int, int], octaves: int = 5) -> np.ndarray:
    """Sum of upsampled random grids with halving amplitude, scaled to [0, 1]; shape (h, w)."""
    w, h = size
    out = np.zeros((h, w), np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        cells = 2 ** (octave + 1)
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        layer = Image.fromarray(grid, mode="F").resize((w, h), Image.BICUBIC)
        out += amplitude * np.asarray(layer)
        amplitude *= 0.5
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _palette(rng: np.random.Generator, n: int = 4) -> np.ndarray:
    base = rng.random(3)
    return np.clip(base + rng.normal(0, 0.35, (n, 3)), 0, 1)


def _colourise(values: np.ndarray, palette: np.ndarray) -> np.ndarray:
    stops = np.linspace(0, 1, len(palette))
    channels = [np.interp(values, stops, palette[:, c]) for c in range(3)]
    return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def _landscape(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    sky = _colourise(np.linspace(0, 1, h)[:, None].repeat(w, 1), _palette(rng, 2))
    canvas = sky.copy()
    rows = np.arange(h)[:, None]
    for layer in range(int(rng.integers(2, 5))):
        ridge = fractal_noise(rng, (w, 2), octaves=6)[0]
        base = h * (0.35 + 0.15 * layer + rng.uniform(-0.1, 0.1))
        heights = base - ridge * h * rng.uniform(0.15, 0.45)
        colour = _palette(rng, 1)[0] * rng.uniform(0.4, 1.0)
        shade = fractal_noise(rng, size, octaves=4)[..., None] * 0.3 + 0.7
        mask = rows >= heights[None, :]
        canvas = np.where(mask[..., None], (colour * 255 * shade).astype(np.uint8), canvas)
    return Image.fromarray(canvas)


def _texture(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    noise = fractal_noise(rng, size, octaves=int(rng.integers(3, 7)))
    kind = rng.integers(3)
    if kind == 1:  # marble: sine of distorted coordinate
        xx = np.linspace(0, rng.uniform(4, 20), size[0])[None, :]
        noise = 0.5 + 0.5 * np.sin(xx * np.pi + noise * rng.uniform(4, 12))
    elif kind == 2:  # contour bands
        noise = (noise * rng.integers(3, 9)) % 1.0
    return Image.fromarray(_colourise(noise, _palette(rng, int(rng.integers(2, 6)))))


def _tiles(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    tw, th = int(rng.integers(12, 80)), int(rng.integers(12, 80))
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(3)]
    offset = rng.random() < 0.5
    for j, y in enumerate(range(0, h, th)):
        shift = (tw // 2) * (j % 2) if offset else 0
        for i, x in enumerate(range(-shift, w, tw)):
            draw.rectangle([x + 1, y + 1, x + tw - 2, y + th - 2], fill=colours[(i + j) % len(colours)])
    return image


def _collage(rng: np.random.Generator, size: tuple[int, int], photos: list[Image.Image]) -> Image.Image:
    image = _texture(rng, size)
    for _ in range(int(rng.integers(2, 6))):
        photo = photos[rng.integers(len(photos))]
        pw, ph = photo.size
        cw, ch = int(pw * rng.uniform(0.2, 0.6)), int(ph * rng.uniform(0.2, 0.6))
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        patch = photo.crop((x0, y0, x0 + cw, y0 + ch))
        scale = rng.uniform(0.25, 0.6) * min(size) / max(cw, ch)
        patch = patch.resize((max(4, int(cw * scale)), max(4, int(ch * scale))), Image.BILINEAR)
        image.paste(patch, (int(rng.integers(0, size[0])) - patch.width // 2,
                            int(rng.integers(0, size[1])) - patch.height // 2))
    return image


def _shapes(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    w, h = image.size
    draw = ImageDraw.Draw(image, "RGBA")
    for _ in range(int(rng.integers(3, 14))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(140, 256)),)
        outline = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.04, 0.3) * min(w, h)
        kind = rng.integers(3)
        if kind == 0:
            box = [cx - r, cy - r * rng.uniform(0.4, 1.6), cx + r, cy + r * rng.uniform(0.4, 1.6)]
            draw.ellipse(box, fill=colour, outline=outline, width=int(rng.integers(0, 4)))
        elif kind == 1:
            n = int(rng.integers(3, 9))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = r * rng.uniform(0.5, 1.0, n)
            draw.polygon(
                [(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(radii, angles, strict=True)],
                fill=colour, outline=outline,
            )
        else:
            draw.rectangle([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=colour, outline=outline)
    if rng.random() < 0.5:
        fonts = font_paths()
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(min(w, h) * rng.uniform(0.06, 0.16)))
        text = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(1, 4))))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.text((rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.8)), text, font=font, fill=fill)
    return image


def procedural_image(
    seed: int, long_side: tuple[int, int] = (320, 512), photos: list[Image.Image] | None = None
) -> Image.Image:
    """A structured synthetic scene, a pure function of ``seed`` (and of ``photos`` for collages)."""
    rng = np.random.default_rng(seed)
    size = _size(rng, long_side)
    kinds = ["landscape", "texture", "tiles"] + (["collage", "collage"] if photos else [])
    kind = kinds[rng.integers(len(kinds))]
    if kind == "landscape":
        image = _landscape(rng, size)
    elif kind == "texture":
        image = _texture(rng, size)
    elif kind == "tiles":
        image = _tiles(rng, size)
    else:
        image = _collage(rng, size, photos or [])
    image = _shapes(rng, image)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    grain = rng.normal(0, rng.uniform(1, 6), (size[1], size[0], 1))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))


def photo_composite(
    seed: int, long_side: tuple[int, int], backgrounds: list[Image.Image], cutouts: list[Image.Image]
) -> Image.Image:
    """A photo-like synthetic image: a random crop of a photo or texture (flipped, recoloured)
    with 1-4 photo cut-outs (RGBA) pasted on it, a pure function of ``seed`` and the material.

    Used to stretch a few hundred photos into thousands of training images, and (from material
    that never reaches the train split) as benchmark distractors.
    """
    rng = np.random.default_rng(seed)
    size = _size(rng, long_side)
    if backgrounds:
        photo = backgrounds[rng.integers(len(backgrounds))]
        pw, ph = photo.size
        scale = rng.uniform(0.35, 1.0)
        cw, ch = max(8, int(pw * scale)), max(8, int(ph * scale))
        cw, ch = min(cw, pw), min(ch, ph)
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        image = photo.crop((x0, y0, x0 + cw, y0 + ch)).convert("RGB")
        image = ImageOps.fit(image, size, Image.BILINEAR)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if rng.random() < 0.3:  # a colour shift, so the composite is not its background's copy
            shift = rng.uniform(-40, 40, 3).astype(np.float32)
            image = Image.fromarray(np.clip(np.asarray(image, np.float32) + shift, 0, 255).astype(np.uint8))
    else:
        image = _landscape(rng, size)
    for _ in range(int(rng.integers(1, 5)) if cutouts else 0):
        cutout = cutouts[rng.integers(len(cutouts))]
        target = rng.uniform(0.25, 0.7) * min(size)
        s = target / max(cutout.size)
        piece = cutout.resize((max(4, int(cutout.width * s)), max(4, int(cutout.height * s))), Image.BILINEAR)
        if rng.random() < 0.5:
            piece = ImageOps.mirror(piece)
        x = int(rng.integers(-piece.width // 4, size[0] - 3 * piece.width // 4 + 1))
        y = int(rng.integers(-piece.height // 4, size[1] - 3 * piece.height // 4 + 1))
        image.paste(piece, (x, y), piece.getchannel("A"))
    return image
