"""CPU inference speed of every student against the int8 SSCD teacher, measured in one run.

For each model it builds a Descriptor, warms it up once on a fixed uint8 batch, then times
``embed_batch`` on that batch ``--repeats`` times and reports images/s (median over repeats, and
the best repeat). Rows:

* ``sscd-int8`` — SSCD sscd_disc_mixup quantised to int8, ONNX Runtime (design.md "The int8 SSCD
  teacher"); the baseline every ratio is taken against. It is timed again at the end of the run:
  the two rows' difference shows how much the machine's load drifted meanwhile;
* each student in torch eager (``torch.set_num_threads``);
* each student exported to ONNX (``export_descriptor``, into a temporary folder) and run through
  ONNX Runtime with the same thread count.

Input: ``--batch`` images of 4:3 aspect with short side ``--size`` (288 -> 288x384, SSCD's
``short:288`` protocol). A student whose ONNX export only works at a fixed square size (timm's
MobileViT) is timed at ``size x size`` and its row says so.

    .venv/bin/python benchmarks/inference_speed.py --repeats 2 --out speed.md

Numbers are only comparable within one run (same machine, same load); the load average is
printed beside the table because other processes on a shared machine slow every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASELINE = "sscd-int8"


def _parse_args(argv=None) -> argparse.Namespace:
    from copydistill.models.backbones import STUDENTS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--students",
        nargs="+",
        default=list(STUDENTS),
        metavar="NAME",
        help=f"students to time (default: all of {', '.join(STUDENTS)})",
    )
    p.add_argument("--batch", type=int, default=32, help="images per embed_batch call")
    p.add_argument(
        "--size",
        type=int,
        default=288,
        help="short side; images are 4:3 landscape, so 288 -> 288x384",
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument(
        "--repeats", type=int, default=3, help="timed calls per model, after one warm-up"
    )
    p.add_argument("--dims", type=int, default=512, help="student descriptor dims")
    p.add_argument("--no-torch", action="store_true", help="skip the torch eager rows")
    p.add_argument("--no-onnx", action="store_true", help="skip the exported ONNX rows")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="also write the results: .json for JSON, anything else for markdown",
    )
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.threads < 1 or args.size < 32:
        p.error("--batch, --repeats and --threads must be >= 1 and --size >= 32")
    return args


def fixed_batch(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 NHWC batch with some image-like structure (blocks plus noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, height // 16 + 1, width // 16 + 1, 3))
    smooth = coarse.repeat(16, axis=1).repeat(16, axis=2)[:, :height, :width]
    return np.clip(smooth + rng.integers(-16, 17, smooth.shape), 0, 255).astype(np.uint8)


def time_descriptor(descriptor, pixels: np.ndarray, repeats: int) -> dict:
    """One warm-up call, then ``repeats`` timed ``embed_batch`` calls on the same batch."""
    out = descriptor.embed_batch(pixels)
    if out.shape[0] != len(pixels) or not np.all(np.isfinite(out)):
        raise RuntimeError(f"{descriptor.name}: bad output {out.shape}")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        descriptor.embed_batch(pixels)
        seconds.append(time.perf_counter() - start)
    n = len(pixels)
    return {
        "images_per_s": n / statistics.median(seconds),
        "best_images_per_s": n / min(seconds),
        "seconds": seconds,
        "dims": int(out.shape[1]),
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(args: argparse.Namespace) -> dict:
    import onnxruntime
    import torch

    from copydistill.models.export import export_descriptor
    from copydistill.models.registry import load_descriptor

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
    height, width = args.size, round(args.size * 4 / 3)
    pixels = fixed_batch(args.batch, height, width)
    square = fixed_batch(args.batch, args.size, args.size)

    meta = {
        "cpu": _cpu_name(),
        "cpus_visible": os.cpu_count(),
        "threads": args.threads,
        "batch": args.batch,
        "input": f"{height}x{width}",
        "repeats": args.repeats,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "loadavg_start": _loadavg(),
    }
    rows: list[dict] = []

    def measure(
        model: str, runtime: str, make, batch: np.ndarray | None = None, note: str = ""
    ) -> None:
        _log(f"[{len(rows) + 1}] {model} ({runtime}) ...")
        row = {"model": model, "runtime": runtime, "note": note}
        try:
            descriptor = make()
            if batch is None:  # an exported file: a fixed-size export takes only its square
                fixed = descriptor.resize.mode == "square"
                batch = square if fixed else pixels
                if fixed:
                    row["note"] = f"fixed {args.size}x{args.size} export"
            row["input"] = f"{batch.shape[1]}x{batch.shape[2]}"
            row.update(time_descriptor(descriptor, batch, args.repeats))
            _log(f"    {row['images_per_s']:.1f} images/s")
        except Exception as err:  # noqa: BLE001 — one broken model must not lose the others' numbers
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            _log(f"    failed: {row['error']}")
        rows.append(row)

    measure(
        BASELINE,
        f"onnxruntime int8 ({args.threads} threads)",
        lambda: load_descriptor(BASELINE, threads=args.threads),
        batch=pixels,
    )

    policy = f"short:{args.size}"
    if not args.no_torch:
        for name in args.students:
            measure(
                name,
                f"torch {torch.__version__.split('+')[0]} eager",
                lambda name=name: load_descriptor(f"{name}:dims={args.dims}", resize=policy),
                batch=pixels,
            )

    if not args.no_onnx:
        with tempfile.TemporaryDirectory(prefix="copydistill-speed-") as folder:
            for name in args.students:

                def make(name=name):
                    descriptor = load_descriptor(f"{name}:dims={args.dims}", resize=policy)
                    path = Path(folder) / f"{name}.onnx"
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        export_descriptor(descriptor, "onnx", path)
                    _log(f"    exported in {time.perf_counter() - start:.0f} s")
                    return load_descriptor(f"onnx:{path}", threads=args.threads)

                measure(name, "onnxruntime fp32 (exported)", make)

    # the baseline again: on a shared machine its drift shows how far the load moved the numbers
    measure(
        BASELINE,
        f"onnxruntime int8 ({args.threads} threads)",
        lambda: load_descriptor(BASELINE, threads=args.threads),
        batch=pixels,
        note="again at the end of the run (drift check)",
    )
    meta["loadavg_end"] = _loadavg()
    baseline = next((r for r in rows if r["model"] == BASELINE and "error" not in r), None)
    for row in rows:
        if baseline and "error" not in row:
            row["ratio_to_sscd_int8"] = row["images_per_s"] / baseline["images_per_s"]
    return {"meta": meta, "rows": rows}


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        (
            f"CPU inference speed: {meta['cpu']}, {meta['threads']} threads "
            f"({meta['cpus_visible']} CPUs visible), batch {meta['batch']}, input {meta['input']} "
            f"(4:3, short side {meta['input'].split('x')[0]}), "
            f"median of {meta['repeats']} timed calls "
            f"after one warm-up; torch {meta['torch']}, onnxruntime {meta['onnxruntime']}; "
            f"load average {meta['loadavg_start']} (start) / {meta['loadavg_end']} (end)"
        ),
        "",
        "| model | runtime | input | dims | images/s | best images/s | × sscd-int8 | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['runtime']} | – | – | failed | – | – | {r['error']} |"
            )
            continue
        ratio = f"{r['ratio_to_sscd_int8']:.2f}" if "ratio_to_sscd_int8" in r else "–"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['input']} | {r['dims']} "
            f"| {r['images_per_s']:.1f} "
            f"| {r['best_images_per_s']:.1f} | {ratio} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse_args(argv)
    result = run(args)
    table = markdown(result)
    print(table)
    if args.out:
        from copydistill.io.atomic import atomic_write_text

        text = json.dumps(result, indent=2) if args.out.suffix == ".json" else table + "\n"
        atomic_write_text(args.out, text)
        _log(f"written to {args.out}")
    return 1 if any("error" in r for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
