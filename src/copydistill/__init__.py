"""copydistill: image copy detection descriptors — SSCD baseline, memory-bank distillation, evaluation."""

__version__ = "0.1.0"
