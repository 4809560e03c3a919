"""Descriptors backed by PyTorch modules (eager models and TorchScript files)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from copydistill.models.descriptor import Descriptor, ResizePolicy, l2_normalize


class TorchDescriptor(Descriptor):
    """Wraps a module that maps uint8 NHWC pixels to descriptors (see ``PixelModel``)."""

    def __init__(
        self,
        module: nn.Module,
        name: str,
        dims: int,
        resize: ResizePolicy,
        identity: str,
        device: str = "cpu",
        batch_size: int = 32,
    ):
        self.module = module.to(device).eval()
        self.name = name
        self.dims = dims
        self.resize = resize
        self._identity = identity
        self.device = torch.device(device)
        self.batch_size = batch_size

    def identity(self) -> str:
        return self._identity

    @torch.inference_mode()
    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        out = self.module(tensor)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return l2_normalize(out.float().cpu().numpy())
