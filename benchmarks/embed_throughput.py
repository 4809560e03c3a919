"""End-to-end embedding throughput against the model alone, on the same images, in one run.

Rows (images/s; every ratio is against "model only, batch 1"):

* ``model only, batch 1`` — ``embed_batch`` on each image's prepared (decoded, resized) pixels,
  one at a time: what the network costs, with no decoding and no batching;
* ``model only, window batches`` — ``embed_pixels`` on the prepared pixels of each window of
  ``WINDOW_CHUNKS`` (8) chunks, the accelerator setting (same-shape images share batches);
* ``decode + resize only`` — the decoding threads alone (``--workers``);
* ``end to end, chunk by chunk`` — the previous path: decode a chunk of ``CHUNK`` images, then
  embed it (batches only within the chunk), no overlap;
* ``end to end (embed_records)`` — ``embed_records`` from the files into a fresh store folder:
  windows (of ``window_chunks(descriptor)`` chunks: 8 on an accelerator, 1 on a CPU) decoded
  ahead by a prefetch thread while the model embeds the previous window; and again with 8-chunk
  windows forced.

The mean batch size of each batched row is printed beside it. Images: ``--images`` (default:
the photo cache that ``copydistill data photos`` fills, else procedural scenes written to a
temporary folder), at most ``--limit``, resized by ``--resize`` (SSCD's ``short:288``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/embed_throughput.py --limit 192 --threads 1

Numbers are only comparable within one run; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=None, help="folder of images (default: the photo cache)")
    p.add_argument("--model", default="resnet18:dims=512,seed=0", help="model spec (default: a random ResNet-18)")
    p.add_argument("--resize", default="short:288", help="resize policy (default: short:288)")
    p.add_argument("--limit", type=int, default=192, help="images used (default 192)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda)")
    return p.parse_args(argv)


def _records(folder: Path | None, limit: int, tmp: Path):
    from copydistill.io.records import folder_records

    if folder is None:
        cache = Path.home() / ".cache" / "copydistill" / "photos" / "files"
        if cache.is_dir() and any(cache.iterdir()):
            folder = cache
    if folder is None:  # procedural scenes of varied aspect ratios
        from copydistill.data.procedural import procedural_image

        folder = tmp / "procedural"
        folder.mkdir()
        for i in range(limit):
            procedural_image(i, long_side=(320, 640)).save(folder / f"{i:04d}.jpg", quality=90)
    return folder, folder_records(folder)[:limit]


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main(argv=None) -> int:
    args = _parse_args(argv)
    import numpy as np
    import torch

    from copydistill.eval import embed as embed_module
    from copydistill.eval.embed import _decode, embed_records, window_chunks, window_starts
    from copydistill.io import embeddings as store
    from copydistill.models.registry import load_descriptor

    if args.threads:
        torch.set_num_threads(args.threads)
    descriptor = load_descriptor(args.model, resize=args.resize, device=args.device)
    with tempfile.TemporaryDirectory(prefix="embed-throughput-") as tmp:
        folder, records = _records(args.images, args.limit, Path(tmp))
        print(f"{len(records)} images from {folder}; model {args.model}, resize {args.resize}, "
              f"torch threads {torch.get_num_threads()}, decoding threads {args.workers}, device {args.device}")
        rows: list[tuple[str, float, float | None]] = []
        with ThreadPoolExecutor(args.workers) as pool:
            start = time.perf_counter()
            decoded = list(pool.map(lambda r: _decode(descriptor, r), records))
            decode_s = time.perf_counter() - start
        pixels = [p for p, err in decoded if err is None]
        n = len(pixels)
        descriptor.embed_batch(pixels[0][None])  # warm-up
        start = time.perf_counter()
        for p in pixels:
            descriptor.embed_batch(p[None])
        batch1_s = time.perf_counter() - start
        rows.append(("model only, batch 1", _rate(n, batch1_s), 1.0))

        sizes: list[int] = []
        embed_batch = descriptor.embed_batch
        descriptor.embed_batch = lambda x: (sizes.append(len(x)), embed_batch(x))[1]
        windows = window_starts(len(records), embed_module.WINDOW_CHUNKS)
        kept = [p if err is None else None for p, err in decoded]
        start = time.perf_counter()
        for window in windows:
            lo, hi = window[0], window[-1] + store.CHUNK
            descriptor.embed_pixels([p for p in kept[lo:hi] if p is not None])
        window_s = time.perf_counter() - start
        rows.append(("model only, window batches", _rate(n, window_s), float(np.mean(sizes))))
        rows.append(("decode + resize only", _rate(len(records), decode_s), None))

        sizes.clear()
        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            for lo in store.chunk_starts(len(records)):
                chunk = list(pool.map(lambda r: _decode(descriptor, r), records[lo : lo + store.CHUNK]))
                descriptor.embed_pixels([p for p, err in chunk if err is None])
        chunked_s = time.perf_counter() - start
        rows.append(("end to end, chunk by chunk", _rate(n, chunked_s), float(np.mean(sizes))))

        per_window = window_chunks(descriptor)
        for label, cpu_window in ((f"windows of {per_window} chunk(s)", embed_module.CPU_WINDOW_CHUNKS),
                                  (f"{embed_module.WINDOW_CHUNKS}-chunk windows forced", embed_module.WINDOW_CHUNKS)):
            if cpu_window == embed_module.CPU_WINDOW_CHUNKS or per_window != embed_module.WINDOW_CHUNKS:
                sizes.clear()
                saved, embed_module.CPU_WINDOW_CHUNKS = embed_module.CPU_WINDOW_CHUNKS, cpu_window
                start = time.perf_counter()
                embed_records(descriptor, records, Path(tmp) / f"store-{cpu_window}", progress=False,
                              workers=args.workers)
                e2e_s = time.perf_counter() - start
                embed_module.CPU_WINDOW_CHUNKS = saved
                rows.append((f"end to end (embed_records, {label})", _rate(n, e2e_s), float(np.mean(sizes))))
        descriptor.embed_batch = embed_batch

    base = rows[0][1]
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'img/s':>8}  {'x batch 1':>9}  {'mean batch':>10}")
    for name, rate, batch in rows:
        print(f"{name:<{width}}  {rate:>8.1f}  {rate / base:>9.2f}  {'' if batch is None else f'{batch:.1f}':>10}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
