"""Embedding folders and splits: batched, with a progress bar, resumable, stored with ids.

Decoding and resizing overlap with the model (a prefetch thread decodes the next window of
chunks while one is embedded), and on an accelerator same-shape images of a window of 8 chunks
share batches. A run writes
its chunks into an embeddings store folder (``copydistill.io.embeddings``) as it goes; an interrupted run picks up after the last finished chunk, provided the model fingerprint
and the image list are the same. ``embed_part`` and ``assemble_parts`` are shared with the
data-parallel path (``distributed_embed``), so both write and read the same folder.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


# chunks decoded and embedded together on an accelerator: same-shape images across them share
# batches (under short:288 only images of one aspect ratio have one shape, so a 64-image chunk
# alone gives batches of ~2-3 on varied photos, which leaves a GPU launch-bound), while part
# files stay per chunk. On a CPU, bigger batches do not pay (MobileNetV3 measured 0.74-0.81x
# batch 1 at mean batch 2.9, benchmarks/embed_throughput.py), so a window is one chunk there.
WINDOW_CHUNKS = 8
CPU_WINDOW_CHUNKS = 1


def window_chunks(descriptor: Descriptor, device=None) -> int:
    """Chunks per window for ``descriptor`` running on ``device`` (default: its own ``device``,
    if it has one): ``WINDOW_CHUNKS`` on an accelerator, ``CPU_WINDOW_CHUNKS`` on a CPU."""
    device = device if device is not None else getattr(descriptor, "device", None)
    kind = getattr(device, "type", device)
    return WINDOW_CHUNKS if kind not in (None, "cpu") else CPU_WINDOW_CHUNKS


def window_starts(count: int, per_window: int | None = None) -> list[list[int]]:
    """The chunk starts of ``count`` records, grouped into windows of ``per_window`` chunks
    (default ``CPU_WINDOW_CHUNKS``): the unit of batching, and of distribution over ranks."""
    per_window = per_window or CPU_WINDOW_CHUNKS
    starts = list(store.chunk_starts(count))
    return [starts[i : i + per_window] for i in range(0, len(starts), per_window)]


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
class DecodedChunk:
    """One chunk of records: decoded (pixels or the error, per record; empty when not needed)
    and ``part``, the part file a previous run already wrote, if any."""

    start: int
    records: list[ImageRecord]
    decoded: list[tuple[np.ndarray | None, ImageError | None]]
    part: Part | None = None


def decode_window(descriptor: Descriptor, records: list[ImageRecord], window: list[int], out: Path | None,
                  pool: ThreadPoolExecutor, advance: Callable[[int], object]) -> list[DecodedChunk]:
    """The chunks of one window. All read back when every part file exists; else every chunk is
    decoded (on ``pool``), even those with a part, so the window's batches are the ones an
    uninterrupted run makes (resumed vectors stay bit for bit those of a run never stopped)."""
    chunks = [records[start : start + store.CHUNK] for start in window]
    paths = [store.part_path(out, start) if out is not None else None for start in window]
    parts = [store.load_part(p) if p is not None and p.exists() else None for p in paths]
    if all(part is not None for part in parts):
        advance(sum(len(c) for c in chunks))
        return [DecodedChunk(s, c, [], part) for s, c, part in zip(window, chunks, parts, strict=True)]
    decoded = []
    for start, chunk, part in zip(window, chunks, parts, strict=True):
        items = []
        for item in pool.map(lambda r: _decode(descriptor, r), chunk):
            items.append(item)
            advance(1)
        decoded.append(DecodedChunk(start, chunk, items, part))
    return decoded


def embed_chunks(descriptor: Descriptor, chunks: list[DecodedChunk], out: Path | None,
                 on_error: OnError) -> list[Part]:
    """Embed a window's decoded chunks together (equal shapes share batches across chunks:
    ``embed_pixels``), write the part files that do not exist yet (atomically); returns the
    parts in chunk order. In eval mode a vector is its image's alone whatever its batchmates,
    up to float rounding (~1e-7) of the batch size. ``on_error="fail"``: the chunks before the
    failing one are embedded and written first, then the image's error is raised."""
    pending, keeps, skips = [], [], []
    for i, chunk in enumerate(chunks):
        if not chunk.decoded:
            continue
        keep, skipped = [], []
        for record, (pixels, error) in zip(chunk.records, chunk.decoded, strict=True):
            if error is None:
                keep.append((record, pixels))
            elif on_error == "fail":
                embed_chunks(descriptor, chunks[:i], out, on_error)  # keep the chunks before it
                raise error
            else:
                skipped.append((str(record.path), f"{error.kind}: {error.reason}"))
        pending.append(chunk)
        keeps.append(keep)
        skips.append(skipped)
    pixels = [p for keep in keeps for _, p in keep]
    vectors = descriptor.embed_pixels(pixels) if pixels else np.zeros((0, descriptor.dims), np.float32)
    made, offset = {}, 0
    for chunk, keep, skipped in zip(pending, keeps, skips, strict=True):
        vecs = vectors[offset : offset + len(keep)]
        offset += len(keep)
        if chunk.part is None:
            part = Part(Embeddings([r.id for r, _ in keep], vecs, [str(r.path) for r, _ in keep]), skipped)
            if out is not None:
                store.write_part(store.part_path(out, chunk.start), part)
            made[chunk.start] = part
    return [chunk.part if chunk.part is not None else made[chunk.start] for chunk in chunks]


def embed_window(descriptor: Descriptor, records: list[ImageRecord], window: list[int], out: Path | None,
                 on_error: OnError, pool: ThreadPoolExecutor,
                 advance: Callable[[int], object] | None = None) -> list[Part]:
    """One window of chunks (``window_starts``): read back, or decoded on ``pool``, embedded and
    written as part files into ``out``. ``advance(n)`` is called per decoded image."""
    chunks = decode_window(descriptor, records, window, out, pool, advance or (lambda n: None))
    return embed_chunks(descriptor, chunks, out, on_error)


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
    """The windows of ``embed_records``, embedded (or read back) and assembled.

    While the model embeds one window, a prefetch thread decodes and resizes the next (on the
    ``workers`` decoding threads), so the model does not wait for the decoder (PIL's decoders
    and torch both release the GIL)."""
    windows = window_starts(len(records), window_chunks(descriptor))
    parts: list[Part] = []
    with (tqdm(total=len(records), desc=desc, unit="img", disable=not progress, leave=False) as bar,
          ThreadPoolExecutor(max_workers=workers) as pool,
          ThreadPoolExecutor(max_workers=1) as prefetch):  # the bar is cleared even on an error

        def decode(window: list[int]) -> list[DecodedChunk]:
            return decode_window(descriptor, records, window, out, pool, bar.update)

        ahead = prefetch.submit(decode, windows[0]) if windows else None
        for i in range(len(windows)):
            chunks = ahead.result()
            ahead = prefetch.submit(decode, windows[i + 1]) if i + 1 < len(windows) else None
            try:
                parts += embed_chunks(descriptor, chunks, out, on_error)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
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
