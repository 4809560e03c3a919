"""CPU training-step time of the quickstart's student step: fp32 against channels_last and (where
the CPU computes bf16 natively) bf16 autocast, measured in the same process, ratios printed.

    PYTHONPATH=src python benchmarks/cpu_train_step.py --arch resnet18 --batch 48 --size 64

Each step: the student forward/backward on 2B uint8 views + InfoNCE/KoLeo + similarity
distillation against precomputed teacher keys (as the quickstart's cached-key step) + SGD.
bf16 is skipped where the CPU lacks AVX-512 BF16/AMX (oneDNN emulates it there, far slower);
``--force-bf16`` measures it anyway. ``--compile`` adds the same variants with the student
wrapped in ``torch.compile`` (inductor; its compilation falls in the two warm-up steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from copydistill.config import config_from_dict
from copydistill.models.backbones import EmbeddingModel, PixelModel
from copydistill.models.teachers import FrozenTeacher
from copydistill.train.distillation import DistillationModule
from copydistill.train.teacher import TorchTeacher
from copydistill.train.run import cpu_has_bf16


def measure(arch: str, batch: int, size: int, bf16: bool, channels_last: bool, steps: int,
            compile_student: bool = False) -> float:
    config = config_from_dict(dict(arch=arch, dims=512, batch_size=batch, image_size=size, mixup=False,
                         teacher="sscd-int8", bank_size=1024, channels_last=channels_last,
                         entropy_weight=1, kd_weight=1.0))
    # keys come with the batch (the quickstart's cached keys): the teacher is never called
    teacher = TorchTeacher(PixelModel(FrozenTeacher(EmbeddingModel("resnet18", dims=512))), 512)
    torch.manual_seed(0)
    module = DistillationModule(config, teacher)
    if channels_last:
        module.student.to(memory_format=torch.channels_last)
    if compile_student:
        module.student = torch.compile(module.student)
    module.log = lambda *a, **k: None  # no Trainer attached
    module.log_dict = lambda *a, **k: None
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.01, momentum=0.9)
    batch_data = {"views": torch.randint(0, 256, (batch, 2, 3, size, size), dtype=torch.uint8),
                  "index": torch.arange(batch),
                  "teacher": torch.nn.functional.normalize(torch.randn(batch, 2, 512), dim=-1)}
    times = []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch_data, step)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=48, help="images per step (2 views each)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--force-bf16", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile'd students")
    args = parser.parse_args()
    variants = {"fp32": (False, False), "fp32 + channels_last": (False, True)}
    if cpu_has_bf16() or args.force_bf16:
        variants |= {"bf16": (True, False), "bf16 + channels_last": (True, True)}
    variants = {name: (*flags, False) for name, flags in variants.items()}
    if args.compile:
        variants |= {f"{name} + compile": (*flags[:2], True) for name, flags in variants.items()}
    results = {name: measure(args.arch, args.batch, args.size, bf16, cl, args.steps, compiled)
               for name, (bf16, cl, compiled) in variants.items()}
    base = results["fp32"]
    print(f"{args.arch}, {2 * args.batch} views at {args.size} px, threads {torch.get_num_threads()}, "
          f"native bf16: {cpu_has_bf16()}")
    for name, seconds in results.items():
        print(f"  {name:22s} {seconds:6.3f} s/step  x{base / seconds:4.2f} vs fp32")
    print(json.dumps({"arch": args.arch, "views": 2 * args.batch, "size": args.size,
                      "native_bf16": cpu_has_bf16(), "s_per_step": results}))


if __name__ == "__main__":
    main()
