"""MoCo on the compact descriptor with RDCD's hard-negative term (method.md §3.3).

The key encoder lives outside the loss (``models/momentum.py``); this module only scores queries
against their keys and a FIFO queue of past keys (a ``MemoryBank``: any size, any batch), then
enqueues the keys gathered from all ranks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from copydistill.losses.distill import MemoryBank
from copydistill.losses.distributed import gather


class MoCoHardNegative(nn.Module):
    """L = CE([q·k | q·Q] / T, 0) + λ_hn · (−mean_i log max(1 − max_j q_i·Q_j, 1e-3))   (§3.3)

    One-directional (view0 queries, view1 keys), as RDCD. T = 0.07 and λ_hn = 5 are RDCD's
    values; λ_hn = 0 leaves plain MoCo v2. The hard-negative term is SSCD's entropy term taken
    against the queue instead of the batch (λ_hn = 5 is SSCD-style λ = 10, §3.3).
    """

    def __init__(self, queue: MemoryBank, temperature: float = 0.07, hn_weight: float = 5.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MoCo temperature must be > 0, got {temperature}")
        if hn_weight < 0:
            raise ValueError(f"hard-negative weight must be >= 0, got {hn_weight}")
        self.queue = queue
        self.temperature = temperature
        self.hn_weight = hn_weight

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, enqueue: bool = True) -> tuple[torch.Tensor, dict]:
        """``queries`` (b, d) L2 rows with grad; ``keys`` (b, d) L2 rows of the key encoder, no grad.
        Computed in the queries' dtype (pass float32) with autocast off."""
        if queries.shape != keys.shape or queries.shape[1] != self.queue.queue.shape[1]:
            raise ValueError(
                f"queries {tuple(queries.shape)}, keys {tuple(keys.shape)} and the {self.queue.queue.shape[1]}-d "
                "queue must agree"
            )
        keys = keys.detach().to(queries.dtype)
        queue = self.queue.queue.to(queries.dtype, copy=True)  # (K, d) snapshot: enqueue writes in place
        with torch.autocast(queries.device.type, enabled=False):  # bf16 logits at T = 0.07 are too coarse
            positive = (queries * keys).sum(1, keepdim=True)  # (b, 1)
            negatives = queries @ queue.T  # (b, K)
            logits = torch.cat([positive, negatives], dim=1) / self.temperature
            labels = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
            nce = F.cross_entropy(logits, labels)
            hardest = negatives.max(dim=1).values
            hard_negative = -torch.log((1 - hardest).clamp(min=1e-3)).mean()
        loss = nce + self.hn_weight * hard_negative
        if enqueue:
            self.queue.enqueue(gather(keys))
        stats = {
            "nce": nce.detach(),
            "hard_negative": hard_negative.detach(),
            "positive_sim": positive.mean().detach(),
            "negative_sim": negatives.mean().detach(),
            "hardest_negative_sim": hardest.mean().detach(),
            "center_norm": queries.mean(0).norm().detach(),
        }
        return loss, stats
