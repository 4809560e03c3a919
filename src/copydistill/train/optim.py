"""Optimisers and the learning-rate schedule (method.md §1.5): one table of optimiser names and
their builders, which the config checks against; linear warmup then cosine to 0, per step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def _lars(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """timm's LARS, trust 0.001, applied to every parameter, biases and BN included (§1.5)."""
    import timm.optim

    return timm.optim.Lars(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           trust_coeff=0.001, eps=1e-8)


def _sgd(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _adamw(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)  # no momentum knob


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"lars": _lars, "sgd": _sgd, "adamw": _adamw}


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r}; use {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The LR factor at a step: linear from 0 over ``warmup_steps``, then cosine to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
