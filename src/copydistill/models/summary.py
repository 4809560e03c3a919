"""``copydistill models list``: every registered architecture with size and cost, and every spec kind."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from copydistill.models.backbones import STUDENTS, TRUNKS, EmbeddingModel
from copydistill.models.registry import spec_kinds


def count_gflops(model: torch.nn.Module, size: int = 224) -> float:
    """Forward GFLOPs of one image (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def model_table(flops: bool = True, dims: int = 512) -> str:
    lines = [f"{'name':<24} {'role':<8} {'params (M)':>10} {'width':>6} {'GFLOPs@224':>11}"]
    for name in TRUNKS:
        model = EmbeddingModel(name, dims=dims)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        width = model.width
        gflops = f"{count_gflops(model):.2f}" if flops else "–"
        role = "student" if name in STUDENTS else "teacher"
        lines.append(f"{name:<24} {role:<8} {params:>10.2f} {width:>6} {gflops:>11}")
    lines.append("")
    lines.append("model specs (--model SPEC):")
    kinds = spec_kinds()
    width = max(len(k.usage) for k in kinds)
    lines += [f"  {k.usage:<{width}}  {k.help}" for k in kinds]
    return "\n".join(lines)
