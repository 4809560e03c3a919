"""Descriptors: students, teachers, TorchScript/ONNX files, pHash — one interface for all."""

from copydistill.models.descriptor import Descriptor, ResizePolicy
from copydistill.models.registry import load_descriptor

__all__ = ["Descriptor", "ResizePolicy", "load_descriptor"]
