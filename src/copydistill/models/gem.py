"""Generalised-mean pooling and the L2 normalisation layer (method.md §1.1)."""

from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from copydistill.models.descriptor import IMAGENET_MEAN, IMAGENET_STD


def gem(x: torch.Tensor, p: float, eps: float, dims: List[int]) -> torch.Tensor:  # noqa: UP006 (TorchScript)
    """Generalised mean of ``x`` over ``dims``: (mean max(x, eps)^p)^(1/p)."""
    return x.clamp(min=eps).pow(p).mean(dim=dims).pow(1.0 / p)


GEM_P = 3.0  # SSCD's fixed GeM power (§1.1): the one default every head and config uses


class GeM(nn.Module):
    """g_c = (mean_{h,w} max(x, eps)^p)^(1/p) with a fixed p (SSCD uses p = 3, not learned)."""

    def __init__(self, p: float = GEM_P, eps: float = 1e-6):
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps, [-2, -1])

    def extra_repr(self) -> str:
        return f"p={self.p}"


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class PixelInput(nn.Module):
    """uint8 RGB NHWC pixels -> ImageNet-normalised float NCHW, so models own their preprocessing."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std
