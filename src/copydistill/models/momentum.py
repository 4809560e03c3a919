"""The MoCo key encoder: an exponential moving average of the student (method.md §3.3)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    """θ_k ← m·θ_k + (1 − m)·θ_q over the parameters, as MoCo (§3.3, m = 0.99 in RDCD).

    Starts as a copy of ``source``; its parameters never require gradients, so no optimiser and
    no DDP reducer sees them. Buffers (BatchNorm statistics) are the key encoder's own, updated by
    its forwards in train mode, as in MoCo. A registered submodule: checkpoints carry it.
    """

    def __init__(self, source: nn.Module, momentum: float = 0.99):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.encoder = copy.deepcopy(source)
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """One EMA step towards ``source`` (the query encoder, same architecture)."""
        mine, theirs = list(self.encoder.parameters()), list(source.parameters())
        if len(mine) != len(theirs):
            raise ValueError(f"key encoder has {len(mine)} parameter tensors, the query encoder {len(theirs)}")
        for key, query in zip(mine, theirs):
            key.lerp_(query.detach(), 1.0 - self.momentum)  # = m·key + (1 − m)·query

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)
