"""Distillation training-step throughput on a GPU: the seed-style fp32 step against our bf16 +
channels_last step, measured in the same process (ratios printed), plus the student-only SSCD step.

    PYTHONPATH=src python benchmarks/gpu_train_step.py --students resnet18 mobilenet_v3_large --batch 256

Each step: SSCD ResNet-50 teacher forward (frozen, eval) on 2B views + student forward/backward +
InfoNCE/KoLeo + similarity distillation over [keys ; 65,536-key bank] + optimiser step. Random
weights and random uint8 views: this measures compute, not data loading.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from copydistill.config import config_from_dict
from copydistill.models.backbones import PixelModel
from copydistill.models.teachers import FrozenTeacher, SSCDResNet50
from copydistill.train.distillation import DistillationModule
from copydistill.train.module import DescriptorModule
from copydistill.train.teacher import TorchTeacher


def measure(student: str, batch: int, size: int, bf16: bool, channels_last: bool, teacher: bool,
            steps: int, warmup: int) -> dict:
    config = config_from_dict(dict(arch=student, dims=512, batch_size=batch, image_size=size, mixup=False,
                         teacher="sscd-r50" if teacher else None, bank_size=65_536,
                         channels_last=channels_last, entropy_weight=10,
                         precision="bf16-mixed" if bf16 else "32-true"))
    teacher_module = PixelModel(FrozenTeacher(SSCDResNet50())).cuda().eval() if teacher else None
    if teacher_module is not None and channels_last:
        teacher_module = teacher_module.to(memory_format=torch.channels_last)
    if teacher_module is None:
        module = DescriptorModule(config).cuda()
    else:
        module = DistillationModule(config, TorchTeacher(teacher_module, 512, bf16_on_gpu=bf16)).cuda()
    if channels_last:
        module.student.to(memory_format=torch.channels_last)
    module.log = lambda *a, **k: None  # no Trainer attached
    module.log_dict = lambda *a, **k: None
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.01, momentum=0.9)
    views = torch.randint(0, 256, (batch, 2, 3, size, size), dtype=torch.uint8, device="cuda")
    data = {"views": views, "index": torch.arange(batch, device="cuda")}

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(data, 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"student": student, "teacher": teacher, "bf16": bf16, "channels_last": channels_last,
            "batch": batch, "steps_per_s": 1 / seconds, "views_per_s": 2 * batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", nargs="+", default=["resnet18", "mobilenet_v3_large", "efficientnet_b0"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    rows = []
    print(f"device: {torch.cuda.get_device_name()}  batch {args.batch} images ({2 * args.batch} views) at {args.size}px")
    print(f"{'student':<22} {'step':<22} {'steps/s':>8} {'views/s':>9} {'x fp32':>7}")
    for student in args.students:
        base = None
        for label, bf16, cl, teacher in (("KD fp32 (seed-style)", False, False, True),
                                         ("KD bf16+channels_last", True, True, True),
                                         ("SSCD-only bf16+cl", True, True, False)):
            row = measure(student, args.batch, args.size, bf16, cl, teacher, args.steps, args.warmup)
            base = base or row["views_per_s"]
            row["label"], row["ratio_vs_fp32"] = label, row["views_per_s"] / base
            rows.append(row)
            print(f"{student:<22} {label:<22} {row['steps_per_s']:>8.2f} {row['views_per_s']:>9.0f} "
                  f"{row['ratio_vs_fp32']:>7.2f}", flush=True)
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
