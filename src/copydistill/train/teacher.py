"""The teacher as the distillation module sees it: one object with ``dims`` and ``keys(views)``,
L2-normalised keys (method.md §2.8 bug 1) of uint8 NCHW views, whatever runs the teacher.

``TeacherKeys`` is not an ``nn.Module``, so the LightningModule holding it never registers the
teacher: SyncBN conversion, DDP and checkpoints never touch it (§2.8 bug 2). Torch teachers are
locked in eval mode by ``FrozenTeacher`` (models/teachers.py) and set to eval again each call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from copydistill.models.descriptor import Descriptor
from copydistill.models.torch_descriptor import TorchDescriptor


class TeacherKeys(ABC):
    dims: int

    @abstractmethod
    def keys(self, views: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``views`` (n, 3, S, S) uint8 -> (n, dims) float32 L2 keys on ``device``, no gradients."""


class TorchTeacher(TeacherKeys):
    """A torch module mapping uint8 NHWC pixels to descriptors (``PixelModel``), run on the
    student's device, under bf16 autocast on a GPU unless ``bf16_on_gpu`` is off, and in
    channels_last on a GPU when ``channels_last`` (as the student, ``StudentInput``)."""

    def __init__(self, module: nn.Module, dims: int, *, bf16_on_gpu: bool = True,
                 channels_last: bool = True):
        self.module, self.dims, self.bf16_on_gpu = module, dims, bf16_on_gpu
        self.channels_last = channels_last
        self._layout: tuple[torch.device, bool] | None = None  # where/how the module was last put

    def pixels(self, views: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
        """uint8 NCHW views -> the NHWC pixels ``PixelModel`` takes. channels_last: NHWC in memory,
        so the normalised NCHW tensor ``PixelInput`` makes is channels_last-strided; else NCHW."""
        views = views.to(device)
        if channels_last:
            return views.permute(0, 2, 3, 1).contiguous()
        return views.permute(0, 2, 3, 1)

    @torch.no_grad()
    def keys(self, views: torch.Tensor, device: torch.device) -> torch.Tensor:
        channels_last = self.channels_last and device.type == "cuda"
        if self._layout != (device, channels_last):  # move (and re-lay) the weights once
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self.module.to(device=device, memory_format=fmt)
            self._layout = (device, channels_last)
        self.module.eval()
        bf16 = device.type == "cuda" and self.bf16_on_gpu
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            keys = self.module(self.pixels(views, device, channels_last))
        return nn.functional.normalize(keys.float(), dim=1)


class RuntimeTeacher(TeacherKeys):
    """A Descriptor that runs in its own runtime (ONNX Runtime for ``sscd-int8``), on the CPU."""

    def __init__(self, descriptor: Descriptor):
        self.descriptor, self.dims = descriptor, descriptor.dims

    @torch.no_grad()
    def keys(self, views: torch.Tensor, device: torch.device) -> torch.Tensor:
        nhwc = views.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return torch.from_numpy(np.asarray(self.descriptor.embed_batch(nhwc))).to(device)


def teacher_keys_for(descriptor: Descriptor, *, bf16_on_gpu: bool = True,
                     channels_last: bool = True) -> TeacherKeys:
    """Torch Descriptors run as modules on the student's device; any other through its runtime."""
    if isinstance(descriptor, TorchDescriptor):
        return TorchTeacher(descriptor.module, descriptor.dims, bf16_on_gpu=bf16_on_gpu,
                            channels_last=channels_last)
    return RuntimeTeacher(descriptor)
