"""Training data: two augmented views per image (repeated augmentation, method.md §1.2), seeded
by (seed, epoch, index, copy) so runs and resumes see the same views; and a cache of
precomputed views with their teacher keys, so an expensive (CPU-only) teacher runs once per view
instead of once per step (design.md "Performance").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from copydistill.augment.sscd import SSCDAugment, view_rng
from copydistill.errors import CopydistillError, ImageError
from copydistill.io.atomic import atomic_write, atomic_write_text
from copydistill.io.embeddings import Embeddings
from copydistill.io.images import list_images, load_image
from copydistill.models.descriptor import Descriptor
from copydistill.train.copies import pair_order


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a seeded permutation per epoch, sharded across ranks.

    Lightning calls ``set_epoch`` at every epoch start. Each rank gets the same number of items
    (drop-last), so DDP steps stay in lock-step. ``resume_from`` makes iterations of one epoch
    start after the items already trained on (mid-epoch resume, see ``train.run.ViewsData``).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True,
                 partners: list[np.ndarray] | None = None):
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.partners = partners  # per image, its teacher-mined copies: placed next to it (train/copies.py)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, items to skip in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self._resume is not None and epoch > self._resume[0]:
            self._resume = None  # the resumed epoch is over

    def resume_from(self, epoch: int, items: int) -> None:
        self._resume = (epoch, items) if items > 0 else None

    def __len__(self) -> int:
        return self.size // self.world

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        if self.partners is not None:
            order = pair_order(order, self.partners, rng)
        per_rank = self.size // self.world
        mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        if self._resume is not None and self._resume[0] == self.epoch:
            mine = mine[self._resume[1] :]
        return iter([(self.epoch, int(i)) for i in mine])


class TwoViewImages(Dataset):
    """Images of a folder -> (views uint8 (2, 3, S, S), index). Unreadable images are replaced by
    the next readable one (and counted), so one bad file never stops a long run."""

    def __init__(self, folder: str | Path, augment: SSCDAugment, seed: int = 0):
        self.paths = list_images(folder)
        if len(self.paths) < 2:
            raise CopydistillError(f"{folder}: needs at least 2 training images, found {len(self.paths)}")
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int):
        for offset in range(len(self.paths)):
            try:
                return load_image(self.paths[(index + offset) % len(self.paths)])
            except ImageError:
                continue
        raise CopydistillError("no training image could be decoded")

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        image = self.load(index)
        views = torch.stack([self.augment(image, view_rng(self.seed, epoch, index, c)) for c in range(2)])
        return {"views": views, "index": index}


class CachedTeacherViews(Dataset):
    """Precomputed views (N, V, 3, S, S) with their teacher keys (N, V, D); an item is two distinct
    views of one image, chosen per epoch. Built once by ``build_view_cache`` and memory-mapped."""

    def __init__(self, views: np.ndarray, keys: np.ndarray | None, seed: int = 0):
        self.views, self.keys, self.seed = views, keys, seed

    def __len__(self) -> int:
        return self.views.shape[0]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        pick = rng.choice(self.views.shape[1], 2, replace=False)
        item = {"views": torch.from_numpy(np.ascontiguousarray(self.views[index, pick])), "index": index}
        if self.keys is not None:
            item["teacher"] = torch.from_numpy(np.ascontiguousarray(self.keys[index, pick])).float()
        return item


def _files_digest(paths: list[Path]):
    """A sha256 over the files' paths, sizes and modification times (cache keys)."""
    digest = hashlib.sha256()
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest


def _views_key(paths: list[Path], augment: SSCDAugment, copies: int, seed: int) -> str:
    digest = _files_digest(paths)
    digest.update(f"{augment.setting}|{augment.size}|{augment.crop_scale_min}|{copies}|{seed}".encode())
    return digest.hexdigest()[:16]


def build_view_cache(
    folder: str | Path, augment: SSCDAugment, copies: int, teacher: Descriptor | None, cache_dir: str | Path,
    seed: int = 0, batch_size: int = 64, progress: bool = True, view_seed: int | None = None,
) -> CachedTeacherViews:
    """Views of every image (``copies`` each) and the teacher's keys for them, cached on disk.

    ``view_seed`` (default ``seed``) makes the views; ``seed`` draws two of them per image and
    epoch. The views file depends on the images, augmentation, copies and view seed; the keys
    file also on the teacher's fingerprint. Both are reused by later runs; an interrupted build
    restarts.
    """
    view_seed = seed if view_seed is None else view_seed
    data = TwoViewImages(folder, augment, view_seed)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    key = _views_key(data.paths, augment, copies, view_seed)
    views_path = cache / f"views-{key}.npy"
    if not views_path.is_file():
        views = np.zeros((len(data), copies, 3, augment.size, augment.size), np.uint8)
        for i in tqdm(range(len(data)), desc="augmenting views", unit="img", disable=not progress):
            image = data.load(i)
            for c in range(copies):
                views[i, c] = augment(image, view_rng(view_seed, 2**31, i, c)).numpy()  # cache "epoch"
        with atomic_write(views_path, "wb") as handle:
            np.save(handle, views)
    views = np.load(views_path, mmap_mode="r")
    if teacher is None:
        return CachedTeacherViews(views, None, seed)
    teacher_id = hashlib.sha256(json.dumps(teacher.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
    keys_path = cache / f"teacher-{key}-{teacher_id}.npy"
    if not keys_path.is_file():
        flat = views.reshape(-1, 3, augment.size, augment.size)
        keys = np.zeros((flat.shape[0], teacher.dims), np.float32)
        for start in tqdm(range(0, len(flat), batch_size), desc=f"teacher {teacher.name}",
                          unit="batch", disable=not progress):
            batch = np.ascontiguousarray(flat[start : start + batch_size].transpose(0, 2, 3, 1))
            keys[start : start + batch_size] = teacher.embed_batch(batch)
        with atomic_write(keys_path, "wb") as handle:
            np.save(handle, keys.reshape(len(data), copies, teacher.dims))
        atomic_write_text(cache / f"teacher-{key}-{teacher_id}.json", json.dumps(teacher.fingerprint()))
    return CachedTeacherViews(views, np.load(keys_path, mmap_mode="r"), seed)


class WithImageKeys(Dataset):
    """Adds the teacher's key of each *unedited* image to every item, for both of its views
    (``kd_target: clean``, docs/training.md): one teacher pass per image instead of per view."""

    def __init__(self, dataset: Dataset, keys: np.ndarray):
        if len(keys) != len(dataset):
            raise CopydistillError(f"{len(keys)} teacher keys for {len(dataset)} training images")
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        item = self.dataset[key]
        item["teacher"] = torch.from_numpy(np.asarray(self.keys[item["index"]], np.float32)).expand(2, -1).clone()
        return item


def random_image_keys(count: int, dims: int, seed: int) -> np.ndarray:
    """``kd_target: random``: a fixed random unit key per training image, ``(count, dims)``,
    seeded — the clean-key term's instance classification against fixed, well-spread prototypes,
    with nothing of what the teacher knows (a control; docs/quickstart.md, twelfth round)."""
    keys = np.random.default_rng(seed).standard_normal((count, dims)).astype(np.float32)
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


def image_teacher_keys(folder: str | Path, teacher: Descriptor, cache_dir: str | Path,
                       progress: bool = True, known: Embeddings | None = None) -> np.ndarray:
    """The teacher's key of every unedited training image at the teacher's own resize policy
    (``sscd-int8``: short side 288), ``(N, D)``, cached on disk by images and teacher. ``known``:
    the same teacher's embeddings of some of these files (e.g. the quickstart's evaluation of the
    train split, the same computation): their vectors are taken, the other images are embedded."""
    paths = list_images(folder)
    digest = _files_digest(paths)
    digest.update(json.dumps(teacher.fingerprint(), sort_keys=True).encode())
    path = Path(cache_dir) / f"image-keys-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    keys = np.zeros((len(paths), teacher.dims), np.float32)
    rows = {}  # resolved path -> row of ``known``
    if known is not None and known.dims == teacher.dims:
        rows = {str(Path(p).resolve()): i for i, p in enumerate(known.paths)}
    todo = []
    for i, p in enumerate(paths):
        if (row := rows.get(str(p.resolve()))) is None:
            todo.append(i)
        else:
            keys[i] = known.vectors[row]
    for i in tqdm(todo, desc=f"teacher {teacher.name} (unedited images)", unit="img",
                  disable=not progress or not todo):
        try:
            keys[i] = teacher.embed_images([load_image(paths[i])])[0]
        except ImageError:
            keys[i] = 0.0  # an unreadable image: its views are another image's (TwoViewImages.load)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        np.save(handle, keys)
    return keys

