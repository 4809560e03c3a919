"""Teacher models from published weight files (method.md §1.1, §2.2, §3.2, §2.8).

* ``sscd-torchvision:PATH`` — SSCD's ``.torchvision.pt`` state dict (``backbone.*`` keys) into
  torchvision ResNet-50 with GeM(p=3) in place of avgpool and ``fc`` 2048 -> dims, then L2.
* ``dino-vitb16:PATH`` — DINO's ViT-B/16 weights (the plain backbone checkpoint, or the full
  training checkpoint's ``teacher``) into timm; descriptor L2(concat(CLS, GeM(patch tokens))),
  1536-d, at any batch size and any input size (position embeddings interpolated).

Every file a user hands us is read with ``torch.load(weights_only=True)``: a pickle that tries to
run code is refused. Teachers are frozen and locked in eval mode (``FrozenTeacher``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from copydistill.errors import ModelSpecError
from copydistill.io.torch_files import torch_load_safely
from copydistill.models.gem import GEM_P, GeM, gem


def load_weights(path: str | Path) -> dict:
    """A state dict (or checkpoint dict) from ``path``, tensors only: code in a pickle is refused."""
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"{path}: weights file not found")
    # DINO's full checkpoints store their argparse.Namespace: allowed, nothing else is
    data = torch_load_safely(path, allowed=(argparse.Namespace,))
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: expected a state dict, got {type(data).__name__}")
    return data


def _mismatch(path: Path, what: str, missing, unexpected) -> ModelSpecError:
    def show(keys):
        keys = sorted(keys)
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [f"{path}: does not match {what}."]
    if missing:
        parts.append(f"missing keys: {show(missing)}.")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}.")
    return ModelSpecError(" ".join(parts))


def load_checked(model: nn.Module, state: dict, path: Path, what: str) -> None:
    """``load_state_dict`` that explains missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
             for k, v in state.items() if k in expected and hasattr(v, "shape") and v.shape != expected[k].shape]
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if wrong or missing or unexpected:
        error = _mismatch(path, what, missing, unexpected)
        if wrong:
            error = ModelSpecError(f"{error} wrong shapes: {', '.join(wrong[:3])}.")
        raise error
    model.load_state_dict(state)


class SSCDResNet50(nn.Module):
    """SSCD's torchvision-format model: ``backbone`` = ResNet-50, avgpool -> GeM(3), fc -> dims."""

    def __init__(self, dims: int = 512, gem_p: float = GEM_P):
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.resnet50(weights=None, num_classes=dims, zero_init_residual=True)
        self.backbone.avgpool = GeM(gem_p)
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x), dim=-1)


def load_sscd_torchvision(path: str | Path) -> SSCDResNet50:
    path = Path(path)
    state = load_weights(path)
    state = state.get("state_dict", state)
    classy_prefixes = ("model.trunk.", "trunk.", "classy_state_dict", "backbone.initial_block.",
                       "backbone.blocks.", "embeddings.")
    if any(k.startswith(classy_prefixes) for k in state):
        raise ModelSpecError(
            f"{path}: this is a Classy Vision checkpoint (.classy.pt); pass SSCD's "
            ".torchvision.pt file with sscd-torchvision: or the .torchscript.pt with torchscript:"
        )
    if "backbone.fc.weight" not in state:
        raise _mismatch(path, "SSCD's .torchvision.pt format (keys backbone.*)", {"backbone.fc.weight"},
                        [k for k in state if not k.startswith("backbone.")])
    dims = state["backbone.fc.weight"].shape[0]
    model = SSCDResNet50(dims)
    load_checked(model, state, path, "SSCD's ResNet-50 (.torchvision.pt, fc 2048 -> dims)")
    return model


class DinoViT(nn.Module):
    """DINO ViT-B/16 descriptor: L2(concat(CLS token, GeM(p=3) over patch tokens)) (§3.2)."""

    def __init__(self, gem_p: float = GEM_P):
        super().__init__()
        import timm

        self.vit = timm.create_model(
            "vit_base_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True,
            dynamic_img_pad=True,
        )
        self.gem_p = gem_p
        self.dims = 2 * self.vit.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)  # (B, 1 + N, C), final norm applied
        prefix = self.vit.num_prefix_tokens
        cls, patches = tokens[:, 0], tokens[:, prefix:]
        pooled = gem(patches, self.gem_p, 1e-6, [1])
        return F.normalize(torch.cat([cls, pooled], dim=-1), dim=-1)


DINO_PREFIXES = ("module.", "backbone.")


def load_dino_vitb16(path: str | Path) -> DinoViT:
    path = Path(path)
    state = load_weights(path)
    if "teacher" in state and isinstance(state["teacher"], dict):  # DINO's full checkpoint
        state = state["teacher"]
    cleaned = {}
    for key, value in state.items():
        for prefix in DINO_PREFIXES:
            key = key.removeprefix(prefix)
        if not key.startswith("head."):  # DINO's projection head is not part of the descriptor
            cleaned[key] = value
    model = DinoViT()
    expected = model.vit.state_dict()
    if "pos_embed" in cleaned and cleaned["pos_embed"].shape != expected["pos_embed"].shape:
        raise ModelSpecError(
            f"{path}: position embeddings {tuple(cleaned['pos_embed'].shape)} do not fit ViT-B/16 at 224 "
            f"{tuple(expected['pos_embed'].shape)}; is this ViT-B/8 or another size?"
        )
    load_checked(model.vit, cleaned, path, "DINO ViT-B/16 (timm vit_base_patch16_224 key names)")
    return model


class FrozenTeacher(nn.Module):
    """A teacher that cannot train: no gradients, and ``train()`` leaves it in eval mode (§2.8 bug 2)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(x).float(), dim=-1)
