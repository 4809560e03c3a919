"""Views/s of the CPU augmentation path (PIL + AugLy, one process) against the batched path
(``augment_device: gpu``: ``augment/gpu.py``) on ``--device``, from the same JPEG files, in one run.

* ``cpu`` — ``SSCDAugment`` on PIL-decoded images, two views per image, one process (multiply by
  the loader's workers for a machine's rate);
* ``batched on DEVICE`` — what the loader workers still do (read the bytes; for ADVANCED, PIL
  decode + ``pre_crop``: flip, rotations, overlays), timed separately, and what the training device
  does per batch (``DeviceViews``: batched decode for SIMCLR/STRONG_BLUR, then ``GPUAugment``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/augment_throughput.py --setting STRONG_BLUR --images 64
    python benchmarks/augment_throughput.py --setting ADVANCED --device cuda --batch 256

Numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", default="STRONG_BLUR", choices=["SIMCLR", "STRONG_BLUR", "ADVANCED"])
    p.add_argument("--images", type=int, default=64, help="procedural JPEG files written and used")
    p.add_argument("--batch", type=int, default=32, help="images per device batch")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import torch

    from copydistill.augment.gpu import GPUAugment
    from copydistill.augment.sscd import SSCDAugment, view_rng
    from copydistill.data.procedural import procedural_image
    from copydistill.io.images import load_image
    from copydistill.train.gpu_views import DeviceViews, TwoViewSources, collate_sources

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(args.images):
            procedural_image(i, long_side=(480, 640)).save(folder / f"{i:04d}.jpg", quality=90)
        cpu = SSCDAugment(args.setting, args.size)
        paths = sorted(folder.glob("*.jpg"))
        start = time.perf_counter()
        for i, path in enumerate(paths):
            image = load_image(path)
            for c in range(2):
                cpu(image, view_rng(0, 0, i, c))
        cpu_rate = 2 * len(paths) / (time.perf_counter() - start)

        sources = TwoViewSources(folder, cpu, seed=0)
        start = time.perf_counter()
        items = [sources[(0, i)] for i in range(len(sources))]
        worker_rate = 2 * len(items) / (time.perf_counter() - start)
        views = DeviceViews(GPUAugment(args.setting, args.size), seed=0)
        batches = [collate_sources(items[i : i + args.batch]) for i in range(0, len(items), args.batch)]
        views(dict(batches[0]), device, epoch=0, step=0, rank=0)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step, batch in enumerate(batches):
            out = views(dict(batch), device, epoch=0, step=step, rank=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        device_rate = 2 * len(items) / (time.perf_counter() - start)
        assert out["views"].shape[-1] == args.size
    print(f"{args.setting}, {args.images} images (480-640 px), views {args.size}px, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  cpu path (PIL + AugLy), one process        {cpu_rate:8.1f} views/s")
    print(f"  batched: loader work, one process          {worker_rate:8.1f} views/s")
    print(f"  batched: device work on {args.device:<19} {device_rate:8.1f} views/s")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
