"""The embeddings store: vectors with their image ids and paths, on disk.

A folder being filled holds ``part-NNNNNNNNN.npz`` chunks (``CHUNK`` records each, in record
order) and ``meta.json`` (the model fingerprint and the exact files: what a resumed run must
match). Finished, it holds ``embeddings.npz`` (``ids``, ``vectors``, ``paths``), ``meta.json`` and
``skipped.tsv`` (the files that could not be used). ``write_arrays`` is the one writer of these
``.npz`` files (parts, finished embeddings and the index's ids files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from copydistill.errors import CopydistillError
from copydistill.io.atomic import atomic_write, atomic_write_text, ensure_dir
from copydistill.io.records import ImageRecord
from copydistill.io.skiplist import read_skip_list, write_skip_list

CHUNK = 64  # images per part file: what a kill -9 can lose (and the resume granularity)
EMBEDDINGS_FILE = "embeddings.npz"
META_FILE = "meta.json"
SKIPPED_FILE = "skipped.tsv"


def write_arrays(
    path: str | Path,
    ids: list[str],
    paths: list[str],
    vectors: np.ndarray | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> None:
    """Write ``ids``, ``paths`` and, when given, ``vectors`` (float32) and the skipped
    (path, reason) pairs as one ``.npz``, atomically."""
    arrays = {"ids": np.array(ids, dtype=str)}
    if vectors is not None:
        arrays["vectors"] = np.asarray(vectors, dtype=np.float32)
    arrays["paths"] = np.array(paths, dtype=str)
    if skipped is not None:
        arrays["skipped_paths"] = np.array([p for p, _ in skipped], dtype=str)
        arrays["skipped_reasons"] = np.array([r for _, r in skipped], dtype=str)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **arrays)


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
        write_arrays(path, self.ids, self.paths, self.vectors)

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


def write_part(path: Path, part: Part) -> None:
    e = part.embeddings
    write_arrays(path, e.ids, e.paths, e.vectors, part.skipped)


def load_part(path: Path) -> Part:
    embeddings = Embeddings.load(path)
    with np.load(path, allow_pickle=False) as data:
        skipped = [(str(p), str(r)) for p, r in
                   zip(data.get("skipped_paths", []), data.get("skipped_reasons", []), strict=True)]
    return Part(embeddings, skipped)


def cache_meta(fingerprint: dict, records: list[ImageRecord]) -> dict:
    """What a store folder must match to be reused: the model and the exact files (same ids
    over other files are not reused)."""
    return {"fingerprint": fingerprint, "chunk": CHUNK, "ids": [r.id for r in records],
            "files": [_file_key(r.path) for r in records]}


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return str(path)


def start_cache(out: Path, meta: dict) -> None:
    """Make ``out`` ready for the parts of ``meta``'s run: drop the parts of another model or
    image list (an interrupted run of the same one is resumed) and record ``meta``."""
    ensure_dir(out, "output folder")
    stale = out / META_FILE
    if stale.exists() and json.loads(stale.read_text()) != meta:
        for part in out.glob("part-*.npz"):
            part.unlink()
    atomic_write_text(out / META_FILE, json.dumps(meta))


def load_finished(out: Path, meta: dict) -> Embeddings | None:
    """The finished ``embeddings.npz`` in ``out`` if its ``meta.json`` equals ``meta``."""
    meta_path, final = out / META_FILE, out / EMBEDDINGS_FILE
    if not (meta_path.is_file() and final.is_file()):
        return None
    try:
        if json.loads(meta_path.read_text()) != meta:
            return None
    except json.JSONDecodeError:
        return None
    return Embeddings.load(final)


def resumable(out: Path, fingerprint: dict, records: list[ImageRecord]) -> int:
    """How many images an interrupted run already embedded into ``out`` (0 if none match)."""
    try:
        stored = json.loads((out / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    if stored != cache_meta(fingerprint, records) or (out / EMBEDDINGS_FILE).is_file():
        return 0
    return sum(min(CHUNK, len(records) - s) for s in chunk_starts(len(records))
               if part_path(out, s).is_file())


def join_parts(parts: list[Part], dims: int) -> Embeddings:
    """The parts' embeddings concatenated in chunk order."""
    return Embeddings(
        [i for part in parts for i in part.embeddings.ids],
        np.concatenate([part.embeddings.vectors for part in parts]) if parts else np.zeros((0, dims), np.float32),
        [p for part in parts for p in part.embeddings.paths],
    )


def finish(out: Path, result: Embeddings, skipped: list[tuple[str, str]]) -> None:
    """Write the finished ``embeddings.npz`` and ``skipped.tsv``; delete the part files."""
    result.save(out / EMBEDDINGS_FILE)
    write_skip_list(out / SKIPPED_FILE, skipped)
    for part in out.glob("part-*.npz"):
        part.unlink()


def read_skipped(out: Path) -> dict[str, str]:
    """{path: reason} of the files a run into ``out`` could not use."""
    return read_skip_list(out / SKIPPED_FILE)
