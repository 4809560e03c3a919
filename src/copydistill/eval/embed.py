"""Embedding folders and splits: batched, with a progress bar, resumable, stored with ids.

A run writes ``part-NNNNNN.npz`` chunks into its folder as it goes; an interrupted run picks up
after the last finished chunk, provided the model fingerprint and the image list are the same.
The finished result is ``embeddings.npz`` (``ids``, ``vectors``, ``paths``) plus ``meta.json``,
and the skipped files (undecodable images) are listed in ``skipped.tsv``.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from copydistill.data.disc import ImageRecord
from copydistill.errors import CopydistillError, ImageError
from copydistill.io.atomic import atomic_write, atomic_write_text
from copydistill.io.images import load_image
from copydistill.models.descriptor import Descriptor

OnError = Literal["skip", "fail"]
CHUNK = 256


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
        return descriptor.prepare(load_image(record.path)), None
    except ImageError as err:
        return None, err


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
    ``on_error="fail"``, raise the typed image error naming the file.
    """
    out = Path(out_dir) if out_dir else None
    meta = cache_meta(descriptor, records)
    if out is not None:
        final = _load_finished(out, meta)
        if final is not None:
            return final
        out.mkdir(parents=True, exist_ok=True)
        stale = out / "meta.json"
        if stale.exists() and json.loads(stale.read_text()) != meta:
            for part in out.glob("part-*.npz"):
                part.unlink()
        atomic_write_text(out / "meta.json", json.dumps(meta))

    ids: list[str] = []
    paths: list[str] = []
    vectors: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(records), desc=desc, unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            part_path = out / f"part-{start:09d}.npz" if out else None
            if part_path is not None and part_path.exists():
                part = Embeddings.load(part_path)
                with np.load(part_path, allow_pickle=False) as data:
                    skipped += [tuple(s.split("\t", 1)) for s in data.get("skipped", [])]
            else:
                decoded = list(pool.map(lambda r: _decode(descriptor, r), chunk))
                keep = []
                part_skipped = []
                for record, (pixels, error) in zip(chunk, decoded, strict=True):
                    if error is None:
                        keep.append((record, pixels))
                    elif on_error == "fail":
                        raise error
                    else:
                        part_skipped.append((str(record.path), f"{error.kind}: {error.reason}"))
                vecs = (
                    descriptor.embed_pixels([p for _, p in keep])
                    if keep
                    else np.zeros((0, descriptor.dims), np.float32)
                )
                part = Embeddings([r.id for r, _ in keep], vecs, [str(r.path) for r, _ in keep])
                if part_path is not None:
                    with atomic_write(part_path, "wb") as handle:
                        np.savez(
                            handle,
                            ids=np.array(part.ids, dtype=str),
                            vectors=part.vectors,
                            paths=np.array(part.paths, dtype=str),
                            skipped=np.array([f"{p}\t{e}" for p, e in part_skipped], dtype=str),
                        )
                skipped += part_skipped
            ids += part.ids
            paths += part.paths
            vectors.append(part.vectors)
            bar.update(len(chunk))
    bar.close()
    result = Embeddings(
        ids, np.concatenate(vectors) if vectors else np.zeros((0, descriptor.dims), np.float32), paths
    )
    if out is not None:
        result.save(out / "embeddings.npz")
        write_skip_list(out / "skipped.tsv", skipped)
        for part in out.glob("part-*.npz"):
            part.unlink()
    elif skipped:
        for path, error in skipped:
            tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
    return result


def cache_meta(descriptor: Descriptor, records: list[ImageRecord]) -> dict:
    """What a cache folder must match to be reused: the model and the exact files (same ids
    over other files are not reused)."""
    return {"fingerprint": descriptor.fingerprint(), "ids": [r.id for r in records],
            "files": [_file_key(r.path) for r in records]}


def _file_key(path: Path) -> str:
    try:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return str(path)


def write_skip_list(path: Path, skipped: list[tuple[str, str]]) -> None:
    atomic_write_text(path, "".join(f"{p}\t{e}\n" for p, e in skipped))


def _load_finished(out: Path, meta: dict) -> Embeddings | None:
    meta_path, final = out / "meta.json", out / "embeddings.npz"
    if not (meta_path.is_file() and final.is_file()):
        return None
    try:
        if json.loads(meta_path.read_text()) != meta:
            return None
    except json.JSONDecodeError:
        return None
    return Embeddings.load(final)
