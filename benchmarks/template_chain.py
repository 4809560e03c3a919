#!/usr/bin/env python
"""The template chain of issue 15, on an example anyone can rebuild offline.

Unrelated photos pasted into the same screenshot frame score high against each other through the
frame alone, and ``dedup``'s transitive groups chain them into one group. Normalising the scores
against a background set (``--background``: other photos in the same frame, and plain photos)
breaks the chain while a real copy pair (a photo and its edited copy) stays grouped.

    python benchmarks/template_chain.py --out /tmp/chain [--model sscd-int8] [--threshold 0.75]

writes ``OUT/folder`` (the images to dedup) and ``OUT/background``, runs ``dedup`` on the folder
raw and with ``--background`` and prints both groupings (also as ``OUT/result.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from copydistill.data.procedural import procedural_image

FRAME_SIZE = (640, 480)
SLOT = (160, 150, 480, 390)  # where the photo goes inside the frame (left, top, right, bottom)


def frame() -> Image.Image:
    """A screenshot-like template: window bar, side panel, text lines, buttons."""
    image = Image.new("RGB", FRAME_SIZE, (236, 238, 242))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 640, 48), fill=(38, 82, 168))
    for x in (14, 34, 54):
        draw.ellipse((x, 16, x + 14, 30), fill=(250, 250, 250))
    draw.rectangle((0, 48, 130, 480), fill=(52, 58, 70))
    for y in range(70, 460, 34):
        draw.rectangle((14, y, 116, y + 14), fill=(120, 130, 150))
    for y in range(64, 140, 18):
        draw.rectangle((160, y, 600, y + 8), fill=(170, 172, 180))
    for x in (160, 300, 440):
        draw.rounded_rectangle((x, 410, x + 120, 450), 8, fill=(46, 160, 90))
    draw.rectangle((500, 150, 620, 390), fill=(210, 214, 222))
    return image


def framed(photo: Image.Image) -> Image.Image:
    image = frame()
    left, top, right, bottom = SLOT
    image.paste(photo.resize((right - left, bottom - top), Image.BILINEAR), (left, top))
    return image


def edited_copy(photo: Image.Image) -> Image.Image:
    """A plain edit: crop 85 %, slight brightness change (a copy any model should find)."""
    w, h = photo.size
    crop = photo.crop((int(w * 0.08), int(h * 0.07), int(w * 0.93), int(h * 0.92)))
    return Image.fromarray(np.clip(np.asarray(crop, np.float32) * 1.08, 0, 255).astype(np.uint8))


def make_example(out: str | Path, framed_count: int = 10, pairs: int = 3,
                 background_framed: int = 8, background_plain: int = 12) -> tuple[Path, Path]:
    """``out/folder``: ``framed_count`` unrelated photos in the one frame and ``pairs`` photos
    with an edited copy each; ``out/background``: other photos, framed and plain (no copies)."""
    out = Path(out)
    folder, background = out / "folder", out / "background"
    folder.mkdir(parents=True, exist_ok=True)
    background.mkdir(parents=True, exist_ok=True)
    for i in range(framed_count):
        framed(procedural_image(1000 + i)).save(folder / f"framed_{i:02d}.png")
    for i in range(pairs):
        photo = procedural_image(2000 + i)
        photo.save(folder / f"pair{i}_original.png")
        edited_copy(photo).save(folder / f"pair{i}_copy.jpg", quality=85)
    for i in range(background_framed):
        framed(procedural_image(3000 + i)).save(background / f"bg_framed_{i:02d}.png")
    for i in range(background_plain):
        procedural_image(4000 + i).save(background / f"bg_plain_{i:02d}.png")
    return folder, background


def groups_of(result) -> list[list[str]]:
    return [sorted(Path(m.path).name for m in g.members) for g in result.groups]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="sscd-int8")
    parser.add_argument("--threshold", type=float, default=0.75)
    args = parser.parse_args(argv)
    from copydistill.models import load_descriptor
    from copydistill.search.dedup import find_copies
    from copydistill.search.normalise import load_background

    folder, background_dir = make_example(args.out)
    descriptor = load_descriptor(args.model)
    raw = find_copies(folder, descriptor, args.threshold, progress=False)
    background = load_background(background_dir, descriptor, progress=False)
    normalised = find_copies(folder, descriptor, args.threshold, progress=False, background=background)
    summary = {"model": args.model, "threshold": args.threshold, "images": raw.images,
               "background": background.describe(), "raw_groups": groups_of(raw),
               "normalised_groups": groups_of(normalised),
               "raw_pairs": [(Path(a).name, Path(b).name, round(s, 4)) for g in raw.groups
                             for a, b, s in g.pairs],
               "normalised_pairs": [(Path(a).name, Path(b).name, round(s, 4)) for g in normalised.groups
                                    for a, b, s in g.pairs]}
    (args.out / "result.json").write_text(json.dumps(summary, indent=1))
    for key in ("raw_groups", "normalised_groups"):
        print(f"{key}: " + "; ".join(f"[{', '.join(g)}]" for g in summary[key]))
    print(summary["background"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
