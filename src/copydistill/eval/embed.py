"""Embedding folders and splits: batched, with a progress bar, resumable, stored with ids.

A run writes its chunks into an embeddings store folder (``copydistill.io.embeddings``) as it
goes; an interrupted run picks up after the last finished chunk, provided the model fingerprint
and the image list are the same. ``embed_part`` and ``assemble_parts`` are shared with the
data-parallel path (``distributed_embed``), so both write and read the same folder.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from copydistill.errors import ImageError
from copydistill.io import embeddings as store
from copydistill.io.atomic import ensure_dir
from copydistill.io.embeddings import Embeddings, Part
from copydistill.io.images import load_image
from copydistill.io.lock import folder_lock
from copydistill.io.records import ImageRecord
from copydistill.models.descriptor import Descriptor

OnError = Literal["skip", "fail"]


def _decode(
    descriptor: Descriptor, record: ImageRecord
) -> tuple[np.ndarray | None, ImageError | None]:
    try:
        image = load_image(record.path)
        descriptor.resize.check(*image.size, record.path)
        return descriptor.prepare(image), None
    except ImageError as err:
        return None, err


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
    path = store.part_path(out, start) if out is not None else None
    chunk = records[start : start + store.CHUNK]
    if path is not None and path.exists():
        advance(len(chunk))
        return store.load_part(path)
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
        store.write_part(path, part)
    return part


def assemble_parts(parts: list[Part], dims: int, out: Path | None) -> Embeddings:
    """Concatenate ``parts`` (in chunk order); with ``out``, finish the store there, else print
    the skipped files."""
    skipped = [s for part in parts for s in part.skipped]
    result = store.join_parts(parts, dims)
    if out is not None:
        store.finish(out, result, skipped)
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
        meta = store.cache_meta(descriptor.fingerprint(), records)
        final = store.load_finished(out, meta)
        if final is not None:
            return final
        store.start_cache(out, meta)
        return _embed_into(descriptor, records, out, on_error, desc, progress, workers)


def _embed_into(descriptor, records, out, on_error, desc, progress, workers) -> Embeddings:
    """The chunks of ``embed_records``, embedded (or read back) and assembled."""
    parts: list[Part] = []
    with (tqdm(total=len(records), desc=desc, unit="img", disable=not progress, leave=False) as bar,
          ThreadPoolExecutor(max_workers=workers) as pool):  # the bar is cleared even on an error
        for start in store.chunk_starts(len(records)):
            parts.append(embed_part(descriptor, records, start, out, on_error, pool, bar.update))
    return assemble_parts(parts, descriptor.dims, out)


def embed_with_skip_list(descriptor: Descriptor, records: list[ImageRecord], out: str | Path | None, *,
                         on_error: OnError, desc: str, progress: bool) -> tuple[Embeddings, dict[str, str]]:
    """``embed_records`` into ``out`` (a temporary folder, removed after, when None) and the
    {path: reason} of the files it skipped."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix=f"copydistill-{desc.replace(' ', '-')}-") as tmp:
            return embed_with_skip_list(descriptor, records, tmp, on_error=on_error, desc=desc,
                                        progress=progress)
    embeddings = embed_records(descriptor, records, out, on_error=on_error, desc=desc, progress=progress)
    return embeddings, store.read_skipped(Path(out))
