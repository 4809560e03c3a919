"""Does distillation beat SSCD-only training at a CPU budget? A sweep over a quickstart run's
cached views and teacher keys (docs/quickstart.md, "Third round").

    PYTHONPATH=src python benchmarks/kd_budget_sweep.py --run runs/quickstart \
        --configs '[{"tag": "sscd"}, {"tag": "kd1", "kd": 1.0}, {"tag": "kd1-late", "kd": 1.0, "kd_start": 20, "kd_full": 40}]'

Every configuration trains a fresh ResNet-18 (512-d, the teacher's width) in a bare loop over the
run's `view-cache` (views + `sscd-int8` keys made by `make quickstart`), with SGD, linear warm-up
and a cosine schedule as `copydistill train`, then evaluates it on the run's benchmark (µAP,
µAP_SN at `--resize`). The loop is hand-written rather than a Lightning run so that one process
can try terms the module does not have:

- ``kd``: similarity distillation over [current keys ; bank] (method.md §2.4, `losses/distill.py`),
  weight ramped linearly from 0 at step ``kd_start`` to ``kd`` at ``kd_full``;
- ``regression``: 2 − 2·cos(predictor(student), own teacher key), predictor ``none``/``linear``/
  ``mlp`` (SimReg-style feature regression; RDCD's history had an MSE variant, §3.4);
- ``relational``: in-batch relational KL in the student's own space — the teacher's similarities
  between the batch's keys as soft targets for the student's similarities between its descriptors;
- ``bn_neck``: an affine-free BatchNorm on the embedding before L2-normalisation.

One JSON line per configuration is printed and appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from copydistill.data.disc import DiscLayout
from copydistill.eval.disc import evaluate_disc
from copydistill.losses.contrastive import InfoNCEEntropy, match_matrix
from copydistill.losses.distill import MemoryBank, SimilarityDistillation
from copydistill.models.backbones import EmbeddingModel, PixelModel
from copydistill.models.descriptor import ResizePolicy
from copydistill.models.gem import PixelInput
from copydistill.models.torch_descriptor import TorchDescriptor

DEFAULTS = dict(tag="run", arch="resnet18", size=96, batch=48, steps=80, warmup=10, lr=0.05,
                entropy=1.0, kd=0.0, kd_start=0, kd_full=0, bank=1024, regression=0.0,
                predictor="none", relational=0.0, bn_neck=False, seed=0)


class Student(nn.Module):
    """EmbeddingModel with an optional affine-free BatchNorm before the L2-normalisation."""

    def __init__(self, arch: str, bn_neck: bool):
        super().__init__()
        self.model = EmbeddingModel(arch, dims=512)
        self.neck = nn.BatchNorm1d(512, affine=False) if bn_neck else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return F.normalize(self.neck(m.fc(m.pool(m.trunk(x)))), dim=-1)


def predictor(kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, 512))
    return nn.Linear(512, 512) if kind == "linear" else nn.Identity()


def kd_weight(c: dict, step: int) -> float:
    if step < c["kd_start"]:
        return 0.0
    if c["kd_full"] > c["kd_start"] and step < c["kd_full"]:
        return c["kd"] * (step - c["kd_start"]) / (c["kd_full"] - c["kd_start"])
    return c["kd"]


def relational_kl(descriptors: torch.Tensor, keys: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    self_pairs = torch.eye(len(keys), dtype=torch.bool, device=keys.device)
    target = F.softmax((keys @ keys.T / temperature).masked_fill(self_pairs, -1e4), dim=-1)
    logits = (descriptors @ descriptors.T / temperature).masked_fill(self_pairs, -1e4)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def train_and_evaluate(c: dict, views: torch.Tensor, keys: torch.Tensor, layout: DiscLayout,
                       resize: str, work: Path) -> dict:
    torch.manual_seed(c["seed"])
    student, head, pixels = Student(c["arch"], c["bn_neck"]), predictor(c["predictor"]), PixelInput()
    optimizer = torch.optim.SGD([*student.parameters(), *head.parameters()], lr=c["lr"],
                                momentum=0.9, weight_decay=1e-4)
    infonce = InfoNCEEntropy(0.05, c["entropy"])
    distill = SimilarityDistillation(MemoryBank(512, c["bank"], c["seed"]), 0.05, 0.05)
    generator = torch.Generator().manual_seed(c["seed"])
    n, per_image = views.shape[:2]
    student.train(), head.train()
    last, start = {}, time.time()
    for step in tqdm(range(c["steps"]), desc=c["tag"], leave=False):
        ids = torch.randperm(n, generator=generator)[: c["batch"]]
        pick = torch.stack([torch.randperm(per_image, generator=generator)[:2] for _ in ids])
        x = torch.cat([views[ids, pick[:, 0]], views[ids, pick[:, 1]]]).float()
        k = torch.cat([keys[ids, pick[:, 0]], keys[ids, pick[:, 1]]])
        x = F.interpolate(x, size=c["size"], mode="bilinear", antialias=True, align_corners=False)
        x = (x - pixels.mean) / pixels.std
        lr = (c["lr"] * (step + 1) / c["warmup"] if step < c["warmup"] else
              c["lr"] * 0.5 * (1 + math.cos(math.pi * (step - c["warmup"]) / max(1, c["steps"] - c["warmup"]))))
        for group in optimizer.param_groups:
            group["lr"] = lr
        descriptors = student(x)
        loss, stats = infonce(descriptors, match_matrix(torch.cat([ids, ids])))
        if c["kd"]:  # the bank fills from step 0 even while the weight is still 0
            kd, kd_stats = distill(descriptors, k)
            loss = loss + kd_weight(c, step) * kd
            stats |= kd_stats
        if c["regression"]:
            cosine = (F.normalize(head(descriptors), dim=-1) * k).sum(-1).mean()
            loss = loss + c["regression"] * (2 - 2 * cosine)
            stats["regression_cos"] = cosine.detach()
        if c["relational"]:
            rel = relational_kl(descriptors, k)
            loss = loss + c["relational"] * rel
            stats["relational"] = rel.detach()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = {name: round(float(value), 3) for name, value in stats.items()}
    train_s = time.time() - start
    student.eval()
    descriptor = TorchDescriptor(PixelModel(student), c["tag"], 512, ResizePolicy.parse(resize),
                                 identity=f"kd-sweep-{c['tag']}-{time.time_ns()}")
    summary = evaluate_disc(layout, descriptor, work / c["tag"], progress=False).summary()
    return {**c, "train_s": round(train_s), "uAP": round(summary["uAP"], 4),
            "uAP_SN": round(summary["uAP_SN"], 4), "last_step": last}


def cached_pair(cache: Path, key: str | None) -> tuple[Path, Path]:
    """The view file ``views-KEY.npy`` and its teacher keys ``teacher-KEY-*.npy``."""
    pairs = {}
    for views in sorted(cache.glob("views-*.npy")):
        found = sorted(cache.glob(f"teacher-{views.stem[len('views-'):]}-*.npy"))
        if found:
            pairs[views.stem[len("views-"):]] = (views, found[0])
    if key is not None:
        if key not in pairs:
            raise SystemExit(f"{cache}: no views-{key}.npy with teacher keys; cached: {', '.join(pairs) or 'none'}")
        return pairs[key]
    if len(pairs) != 1:
        raise SystemExit(f"{cache}: {len(pairs)} cached view sets with teacher keys "
                         f"({', '.join(pairs) or 'run `make quickstart` first'}); pick one with --key")
    return next(iter(pairs.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a `copydistill quickstart` output folder")
    parser.add_argument("--configs", required=True, help="JSON list of configurations (keys: %s)" % ", ".join(DEFAULTS))
    parser.add_argument("--resize", default="short:160", help="evaluation resize (the quickstart's val_resize)")
    parser.add_argument("--out", type=Path, default=Path("runs/kd_budget_sweep.jsonl"))
    parser.add_argument("--key", help="which cached view set, when the run's view-cache holds several")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    views_path, keys_path = cached_pair(args.run / "view-cache", args.key)
    views = torch.from_numpy(np.load(views_path))
    keys = F.normalize(torch.from_numpy(np.load(keys_path)).float(), dim=-1)
    layout = DiscLayout.find(args.run / "benchmark")
    configs = json.loads(args.configs)
    unknown = sorted({key for c in configs for key in c} - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown configuration keys {unknown}; known: {', '.join(DEFAULTS)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for overrides in configs:
        result = train_and_evaluate({**DEFAULTS, **overrides}, views, keys, layout, args.resize,
                                    args.out.parent / "kd_budget_sweep")
        print(json.dumps(result), flush=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
