"""SSCD's InfoNCE with the differential-entropy (KoLeo) regulariser (method.md §1.2), and DirectCLR
(InfoNCE on a leading sub-vector, §2.6)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from copydistill.losses.distributed import gather, gather_with_grad, world

# log(1e-6) as the float32 logits hold it (a Python constant: no tensor, no device sync)
LOG_EPS = float(torch.log(torch.tensor(1e-6)))


def match_matrix(instance_ids: torch.Tensor) -> torch.Tensor:
    """(n, N_glob) bool: local rows vs gathered rows of the same instance (self pair included)."""
    return instance_ids[:, None] == gather(instance_ids)[None, :]


class InfoNCEEntropy(nn.Module):
    """L = mean_i mean_{j in pos(i)} −log(e_ij / (e_ij + Σ_{k in neg(i)} e_ik + 1e-6))
           − λ · mean_i log sqrt(max(2 − 2 max_{k in neg(i)} S_ik, 1e-6))      (§1.2)

    Each positive is contrasted against the negatives of its row only; other positives and the
    self pair are not in the denominator. ``entropy_weight`` λ = 0 disables the KoLeo term.
    Masked means are sums over counts, not boolean indexing: nothing waits for the device.
    """

    def __init__(self, temperature: float = 0.05, entropy_weight: float = 30.0):
        super().__init__()
        self.temperature = temperature
        self.entropy_weight = entropy_weight

    def forward(self, embeddings: torch.Tensor, match: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``embeddings`` (n, d) L2-normalised local rows; ``match`` (n, N_glob) same-instance mask."""
        rank, _ = world()
        n = embeddings.shape[0]
        embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))  # bf16 -> fp32
        everything = gather_with_grad(embeddings)
        with torch.autocast(embeddings.device.type, enabled=False):  # fp32 logits: bf16 is too coarse at τ 0.05
            sims = embeddings @ everything.T
        identity = torch.zeros_like(match)
        rows = torch.arange(n, device=match.device)
        identity[rows, rank * n + rows] = True
        negatives = ~match
        positives = match & ~identity
        logits = sims / self.temperature
        neg_lse = torch.logsumexp(logits.masked_fill(~negatives, float("-inf")), dim=1, keepdim=True)
        # log(e_ij + Σneg e_ik + 1e-6), computed stably
        denom = torch.logsumexp(
            torch.stack([logits, neg_lse.expand_as(logits),
                         torch.full_like(logits, LOG_EPS)]), dim=0
        )
        nll = (denom - logits) * positives
        per_row = nll.sum(1) / positives.sum(1).clamp(min=1)
        with_positive = positives.any(1)
        nce = (per_row * with_positive).sum() / with_positive.sum().clamp(min=1)
        nearest = sims.masked_fill(~negatives, -100.0).max(dim=1).values
        distance = torch.sqrt((2 - 2 * nearest).clamp(min=1e-6))
        entropy = -torch.log(distance).mean()
        loss = nce + self.entropy_weight * entropy
        stats = {
            "nce": nce.detach(),
            "entropy": entropy.detach(),
            "positive_sim": _masked_mean(sims, positives).detach(),
            "negative_sim": _masked_mean(sims, negatives).detach(),
            "nearest_negative_sim": nearest.mean().detach(),
            "center_norm": embeddings.mean(0).norm().detach(),
        }
        return loss, stats


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean(values[mask]) without boolean indexing (which makes the host wait for the device)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


class DirectCLR(nn.Module):
    """InfoNCE (no entropy term) on the re-normalised first ``subdim`` coordinates (§2.6)."""

    def __init__(self, subdim: int = 128, temperature: float = 0.05):
        super().__init__()
        self.subdim = subdim
        self.infonce = InfoNCEEntropy(temperature, entropy_weight=0.0)

    def forward(self, embeddings: torch.Tensor, match: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.subdim >= embeddings.shape[1]:
            raise ValueError(f"DirectCLR sub-vector {self.subdim} must be smaller than {embeddings.shape[1]}")
        loss, stats = self.infonce(F.normalize(embeddings[:, : self.subdim], dim=1), match)
        return loss, {"directclr": stats["nce"]}
