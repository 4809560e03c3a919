"""Augmentations: AugLy compatibility, SSCD settings, mixup."""
