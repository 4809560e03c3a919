"""Mixup / CutMix for contrastive learning (method.md §1.4).

Each element i of a local batch of M = 2B views is, with probability ``mix_prob``, mixed with its
partner M-1-i taken from an unmodified copy of the batch: CutMix with probability ``switch_prob``
(box of side fractions sqrt(1-λ), λ corrected to the kept area), otherwise Mixup, λ ~ Beta(α, α).
Soft targets over the B source images give the positives: match = (Y Yᵀ > 0).

Written here rather than taken from timm/Classy Vision: timm's Mixup pairs for classification
labels and Classy Vision is unmaintained; the pairing and the match matrix are what §1.4 needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixupResult:
    images: torch.Tensor  # (M, C, H, W), same dtype as the input
    targets: torch.Tensor  # (M, B) soft assignment to source images
    mixed: torch.Tensor  # (M,) bool: rows that were changed

    @property
    def match(self) -> torch.Tensor:
        """(M, M) bool: rows sharing any source content (diagonal included)."""
        return (self.targets @ self.targets.T) > 0


@dataclass(frozen=True)
class ContrastiveMixup:
    mix_prob: float = 0.05
    mixup_alpha: float = 2.0
    cutmix_alpha: float = 2.0
    switch_prob: float = 0.5

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MixupResult:
        """``images``: (M, C, H, W) views laid out [view0 of 0..B-1; view1 of 0..B-1]."""
        m = images.shape[0]
        b = m // 2
        source = torch.arange(m) % b
        targets = torch.nn.functional.one_hot(source, b).float()
        out = images.clone()
        original = images.clone()
        mixed = torch.zeros(m, dtype=torch.bool)
        h, w = images.shape[-2:]
        draws = torch.rand(m, 3, generator=generator)
        # λ ~ Beta from a numpy RNG seeded by the same generator: torch's Beta ignores generators
        beta_rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for i in range(m):
            if draws[i, 0] >= self.mix_prob:
                continue
            j = m - 1 - i
            if draws[i, 1] < self.switch_prob:  # CutMix
                lam = float(beta_rng.beta(self.cutmix_alpha, self.cutmix_alpha))
                cut = (1 - lam) ** 0.5
                ch, cw = int(h * cut), int(w * cut)
                cy = int(torch.randint(h, (1,), generator=generator))
                cx = int(torch.randint(w, (1,), generator=generator))
                y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
                x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
                out[i, :, y0:y1, x0:x1] = original[j, :, y0:y1, x0:x1]
                lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
            else:  # Mixup
                lam = float(beta_rng.beta(self.mixup_alpha, self.mixup_alpha))
                blend = lam * original[i].float() + (1 - lam) * original[j].float()
                out[i] = blend.round().to(images.dtype) if not images.is_floating_point() else blend
            targets[i] = lam * targets[i] + (1 - lam) * torch.nn.functional.one_hot(source[j], b).float()
            mixed[i] = True
        return MixupResult(out, targets, mixed)
