"""Write N smooth random JPEGs (a 12x9 random image upscaled bicubically) for the GPU check
scripts: throughput and equivalence inputs, not photos.

    python3 scripts/synthetic_images.py OUT_DIR --count 2000 --size 384x288 --prefix Q
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", default="384x288", help="WIDTHxHEIGHT")
    parser.add_argument("--prefix", default="Q")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(args.count):
        small = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.BICUBIC).save(
            args.out / f"{args.prefix}{i:06d}.jpg", quality=90)


if __name__ == "__main__":
    main()
