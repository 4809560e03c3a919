"""Real photos available offline: sample images inside installed Python packages, user folders,
and (optionally) Debian wallpaper packages fetched once into a cache.

Photos of Debian's ``gcompris-qt-data`` are reserved for held-out evaluation and are refused.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from copydistill.errors import CopydistillError, ImageError
from copydistill.io.images import list_images, load_image

# (package, relative path): natural or textured photos; near-duplicates (motorcycle_right) left out
PACKAGE_PHOTOS = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/cell.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/clock_motion.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/microaneurysms.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/page.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/text.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)
DEBIAN_PHOTO_PACKAGES = ("mate-backgrounds", "ukui-wallpapers")
RESERVED = ("gcompris",)
DEFAULT_CACHE = Path.home() / ".cache" / "copydistill"


def package_photo_paths() -> list[Path]:
    """Sample photos shipped inside installed packages (missing packages are skipped)."""
    paths = []
    for package, relative in PACKAGE_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / relative
            if path.is_file():
                paths.append(path)
    return paths


def check_not_reserved(folder: Path) -> None:
    if any(word in str(folder).lower() for word in RESERVED):
        raise CopydistillError(
            f"{folder}: GCompris photos are reserved for held-out evaluation; "
            "never build benchmarks or train on them"
        )


def user_photo_paths(folders: list[Path]) -> list[Path]:
    paths = []
    for folder in folders:
        check_not_reserved(Path(folder))
        paths += list_images(folder)
    return paths


def debian_photo_paths(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """Wallpaper photos from Debian packages, downloaded with ``apt-get download`` on first use.

    Resolution variants of one wallpaper (``Name_3840x2160.jpg``) are kept once. Returns [] with
    no error when apt cannot fetch (offline, no apt): these photos are optional.
    """
    root = cache / "debian-photos"
    done = root / ".complete"
    if not done.exists() and shutil.which("apt-get") and shutil.which("dpkg"):
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            for package in DEBIAN_PHOTO_PACKAGES:
                result = subprocess.run(
                    ["apt-get", "download", package], cwd=tmp, capture_output=True, timeout=300
                )
                if result.returncode != 0:
                    continue
                for deb in Path(tmp).glob(f"{package}_*.deb"):
                    subprocess.run(["dpkg", "-x", str(deb), str(root / package)], check=False)
            if any(root.glob("*/usr")):
                done.touch()
    if not root.is_dir():
        return []
    chosen: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png") and path.is_file():
            key = re.sub(r"[_-]?\d{3,5}x\d{3,5}$", "", path.stem).lower()
            chosen.setdefault(key, path)
    return sorted(chosen.values())


@functools.lru_cache(maxsize=256)
def load_photo(path: str, long_side: int) -> Image.Image:
    """A photo as RGB with its long side at most ``long_side`` (cached per process)."""
    try:
        image = load_image(path)
    except ImageError:
        return Image.new("RGB", (long_side, long_side), (127, 127, 127))
    image.thumbnail((long_side, long_side), Image.BILINEAR)
    return image
