"""Training: the SSCD baseline and memory-bank distillation on Lightning 2.x."""
