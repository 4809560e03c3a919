"""Embedding folders and splits: batched, with a progress bar, resumable, stored with ids.

A run writes ``part-NNNNNN.npz`` chunks into its folder as it goes; an interrupted run picks up
after the last finished chunk, provided the model fingerprint and the image list are the same.
The finished result is ``embeddings.npz`` (``ids``, ``vectors``, ``paths``) plus ``meta.json``,
and the skipped files (undecodable images) are listed in ``skipped.tsv``. ``embed_part`` and
``assemble_parts`` are shared with the data-parallel path (``distributed_embed``), so both write
and read the same folder.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from copydistill.data.disc import ImageRecord
from copydistill.errors import CopydistillError, ImageError
from copydistill.io.atomic import atomic_write, atomic_write_text, ensure_dir
from copydistill.io.images import load_image
from copydistill.io.lock import folder_lock
from copydistill.io.skiplist import write_skip_list
from copydistill.models.descriptor import Descriptor

OnError = Literal["skip", "fail"]
CHUNK = 64  # images per part file: what a kill -9 can lose (and the resume granularity)


@dataclass
class Embeddings:
    """Vectors with their image ids (and source paths, when known)."""

    ids: list[str]
    vectors: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, path: str | Path) -> None:
        with atomic_write(path, "wb") as handle:
            np.savez(
                handle,
                ids=np.array(self.ids, dtype=str),
                vectors=self.vectors.astype(np.float32),
                paths=np.array(self.paths, dtype=str),
            )

    @classmethod
    def load(cls, path: str | Path) -> Embeddings:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(list(data["ids"]), data["vectors"], list(data["paths"]))
        except (OSError, ValueError, KeyError) as err:
            raise CopydistillError(f"{path}: not a copydistill embeddings file ({err})") from err

    def export_isc_hdf5(self, path: str | Path) -> None:
        """The descriptor HDF5 format of the ISC2021 scripts: ``vectors`` and ``image_names``."""
        import h5py

        with atomic_write(path, "wb") as handle, h5py.File(handle, "w") as h5:
            h5.create_dataset("vectors", data=self.vectors.astype(np.float32))
            h5.create_dataset("image_names", data=np.array(self.ids, dtype="S"))


def _decode(
    descriptor: Descriptor, record: ImageRecord
) -> tuple[np.ndarray | None, ImageError | None]:
    try:
        image = load_image(record.path)
        descriptor.resize.check(*image.size, record.path)
        return descriptor.prepare(image), None
    except ImageError as err:
        return None, err


@dataclass
class Part:
    """One chunk's result: its embeddings and its skipped (path, error) pairs."""

    embeddings: Embeddings
    skipped: list[tuple[str, str]]


def chunk_starts(count: int) -> range:
    """The record offsets at which the chunks of ``count`` records start."""
    return range(0, count, CHUNK)


def part_path(out: Path, start: int) -> Path:
    return out / f"part-{start:09d}.npz"


def start_cache(out: Path, meta: dict) -> None:
    """Make ``out`` ready for the parts of ``meta``'s run: drop the parts of another model or
    image list (an interrupted run of the same one is resumed) and record ``meta``."""
    ensure_dir(out, "output folder")
    stale = out / "meta.json"
    if stale.exists() and json.loads(stale.read_text()) != meta:
        for part in out.glob("part-*.npz"):
            part.unlink()
    atomic_write_text(out / "meta.json", json.dumps(meta))


def embed_part(
    descriptor: Descriptor,
    records: list[ImageRecord],
    start: int,
    out: Path | None,
    on_error: OnError,
    pool: ThreadPoolExecutor,
    advance: Callable[[int], object] | None = None,
) -> Part:
    """The chunk of ``records`` starting at ``start``: read from its part file in ``out`` when a
    previous run wrote it, else embedded (decoding on ``pool``) and written there atomically.
    ``advance(n)`` is called as images are done (per decoded image), for a progress bar."""
    advance = advance or (lambda n: None)
    path = part_path(out, start) if out is not None else None
    chunk = records[start : start + CHUNK]
    if path is not None and path.exists():
        advance(len(chunk))
        return load_part(path)
    decoded = []
    for item in pool.map(lambda r: _decode(descriptor, r), chunk):
        decoded.append(item)
        advance(1)
    keep = []
    skipped = []
    for record, (pixels, error) in zip(chunk, decoded, strict=True):
        if error is None:
            keep.append((record, pixels))
        elif on_error == "fail":
            raise error
        else:
            skipped.append((str(record.path), f"{error.kind}: {error.reason}"))
    vecs = (
        descriptor.embed_pixels([p for _, p in keep])
        if keep
        else np.zeros((0, descriptor.dims), np.float32)
    )
    part = Part(Embeddings([r.id for r, _ in keep], vecs, [str(r.path) for r, _ in keep]), skipped)
    if path is not None:
        with atomic_write(path, "wb") as handle:
            np.savez(
                handle,
                ids=np.array(part.embeddings.ids, dtype=str),
                vectors=part.embeddings.vectors,
                paths=np.array(part.embeddings.paths, dtype=str),
                skipped_paths=np.array([p for p, _ in skipped], dtype=str),
                skipped_reasons=np.array([e for _, e in skipped], dtype=str),
            )
    return part


def load_part(path: Path) -> Part:
    embeddings = Embeddings.load(path)
    with np.load(path, allow_pickle=False) as data:
        skipped = [(str(p), str(r)) for p, r in
                   zip(data.get("skipped_paths", []), data.get("skipped_reasons", []), strict=True)]
    return Part(embeddings, skipped)  # type: ignore[arg-type]


def assemble_parts(parts: list[Part], dims: int, out: Path | None) -> Embeddings:
    """Concatenate ``parts`` (in chunk order); with ``out``, write ``embeddings.npz`` and
    ``skipped.tsv`` there and delete the part files, else print the skipped files."""
    skipped = [s for part in parts for s in part.skipped]
    result = Embeddings(
        [i for part in parts for i in part.embeddings.ids],
        np.concatenate([part.embeddings.vectors for part in parts])
        if parts
        else np.zeros((0, dims), np.float32),
        [p for part in parts for p in part.embeddings.paths],
    )
    if out is not None:
        result.save(out / "embeddings.npz")
        write_skip_list(out / "skipped.tsv", skipped)
        for part in out.glob("part-*.npz"):
            part.unlink()
    else:
        for path, error in skipped:
            tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
    return result


def embed_records(
    descriptor: Descriptor,
    records: list[ImageRecord],
    out_dir: str | Path | None = None,
    on_error: OnError = "skip",
    desc: str = "embed",
    progress: bool = True,
    workers: int = 2,
) -> Embeddings:
    """Embed ``records`` with ``descriptor``; with ``out_dir``, cache and resume there.

    Undecodable images are skipped (listed in ``out_dir/skipped.tsv``) or, with
    ``on_error="fail"``, raise the typed image error naming the file. The data-parallel
    version is ``copydistill.eval.distributed_embed.embed_records_distributed``.
    """
    out = Path(out_dir) if out_dir else None
    if out is None:
        return _embed_into(descriptor, records, None, on_error, desc, progress, workers)
    ensure_dir(out, "output folder")
    with folder_lock(out, "output folder"):  # one writer per folder: a second run waits
        meta = cache_meta(descriptor, records)
        final = load_finished(out, meta)
        if final is not None:
            return final
        start_cache(out, meta)
        return _embed_into(descriptor, records, out, on_error, desc, progress, workers)


def _embed_into(descriptor, records, out, on_error, desc, progress, workers) -> Embeddings:
    """The chunks of ``embed_records``, embedded (or read back) and assembled."""
    parts: list[Part] = []
    with (tqdm(total=len(records), desc=desc, unit="img", disable=not progress, leave=False) as bar,
          ThreadPoolExecutor(max_workers=workers) as pool):  # the bar is cleared even on an error
        for start in chunk_starts(len(records)):
            parts.append(embed_part(descriptor, records, start, out, on_error, pool, bar.update))
    return assemble_parts(parts, descriptor.dims, out)


def cache_meta(descriptor: Descriptor, records: list[ImageRecord]) -> dict:
    """What a cache folder must match to be reused: the model and the exact files (same ids
    over other files are not reused)."""
    return {"fingerprint": descriptor.fingerprint(), "chunk": CHUNK, "ids": [r.id for r in records],
            "files": [_file_key(r.path) for r in records]}


def resumable(out: Path, descriptor: Descriptor, records: list[ImageRecord]) -> int:
    """How many images an interrupted run already embedded into ``out`` (0 if none match)."""
    try:
        stored = json.loads((out / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    if stored != cache_meta(descriptor, records) or (out / "embeddings.npz").is_file():
        return 0
    return sum(min(CHUNK, len(records) - s) for s in chunk_starts(len(records))
               if part_path(out, s).is_file())


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return str(path)


def load_finished(out: Path, meta: dict) -> Embeddings | None:
    """The finished ``embeddings.npz`` in ``out`` if its ``meta.json`` equals ``meta``."""
    meta_path, final = out / "meta.json", out / "embeddings.npz"
    if not (meta_path.is_file() and final.is_file()):
        return None
    try:
        if json.loads(meta_path.read_text()) != meta:
            return None
    except json.JSONDecodeError:
        return None
    return Embeddings.load(final)
