"""Student and teacher trunks by name, and the SSCD embedding head (method.md §1.1, §2.3).

Every model is trunk -> GeM(p=3) -> Linear(width -> dims) -> L2. Trunks come from torchvision
(the seed's students) or timm (anything else timm knows), always randomly initialised here:
weights arrive through checkpoints, never downloads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from copydistill.errors import ModelSpecError
from copydistill.models.gem import GEM_P, GeM, L2Norm, PixelInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Trunk:
    module: nn.Module  # float NCHW -> feature map (N, width, h, w)
    width: int


def _torchvision_resnet(name: str) -> Trunk:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None, zero_init_residual=True)
    body = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return Trunk(body, net.fc.in_features)


def _torchvision_features(name: str) -> Trunk:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    width = _infer_width(net.features)
    return Trunk(net.features, width)


def _torchvision_regnet(name: str) -> Trunk:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    for module in net.modules():  # zero-init the last BN of each residual branch (§1.1 init note)
        if hasattr(module, "f") and hasattr(module.f, "c") and hasattr(module.f.c, "1"):
            bn = module.f.c[1]
            if isinstance(bn, nn.BatchNorm2d):
                nn.init.zeros_(bn.weight)
    return Trunk(nn.Sequential(net.stem, net.trunk_output), net.fc.in_features)


class _TimmFeatures(nn.Module):
    """A timm model's ``forward_features``, without the top-level layers it never uses.

    timm keeps the classifier-side layers of some models even with ``num_classes=0`` (MobileNetV4's
    ``conv_head``/``norm_head``, used only in ``forward_head``): parameters that never get a
    gradient, which DDP refuses (it would need ``find_unused_parameters``, a graph walk every step)
    and which inflate parameter counts. They are replaced by ``nn.Identity``; checkpoints that
    still hold them load (their keys are dropped).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.dropped = _drop_unused_children(net, lambda x: net.forward_features(x))
        self._register_load_state_dict_pre_hook(self._skip_dropped)

    def _skip_dropped(self, state_dict, prefix, *args) -> None:
        for key in [k for k in state_dict if k.startswith(tuple(f"{prefix}net.{d}." for d in self.dropped))]:
            del state_dict[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


def _drop_unused_children(net: nn.Module, forward: Callable, size: int = 64) -> tuple[str, ...]:
    """Replace the top-level children of ``net`` whose parameters ``forward`` never uses by
    ``nn.Identity`` (one backward at ``size`` px, in eval mode); returns their names."""
    was_training = net.training
    net.eval()
    for p in net.parameters():
        p.grad = None
    forward(torch.zeros(1, 3, size, size)).float().sum().backward()
    dropped = tuple(name for name, child in net.named_children()
                    if any(True for _ in child.parameters())
                    and all(p.grad is None for p in child.parameters()))
    for p in net.parameters():
        p.grad = None
    for name in dropped:
        setattr(net, name, nn.Identity())
    net.train(was_training)
    return dropped


def _timm(name: str) -> Trunk:
    import timm

    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    except RuntimeError as err:
        raise ModelSpecError(f"timm does not know the model {name!r}: {err}") from err
    module = _TimmFeatures(net)
    return Trunk(module, _infer_width(module))


def _infer_width(module: nn.Module, size: int = 64) -> int:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(1, 3, size, size))
    module.train(was_training)
    if out.ndim != 4:
        raise ModelSpecError(f"trunk returns a {out.ndim}-d tensor; a feature map (N, C, H, W) is needed")
    return int(out.shape[1])


TRUNKS: dict[str, Callable[[], Trunk]] = {
    "resnet18": lambda: _torchvision_resnet("resnet18"),
    "resnet50": lambda: _torchvision_resnet("resnet50"),
    "efficientnet_b0": lambda: _torchvision_features("efficientnet_b0"),
    "mobilenet_v3_large": lambda: _torchvision_features("mobilenet_v3_large"),
    "mobilenet_v3_large_seed": lambda: _torchvision_features("mobilenet_v3_large"),
    "regnet_y_800mf": lambda: _torchvision_regnet("regnet_y_800mf"),
    "mobilevit_s": lambda: _timm("mobilevit_s"),
    "mobilenetv4_conv_small": lambda: _timm("mobilenetv4_conv_small"),
    "fastvit_t12": lambda: _timm("fastvit_t12"),
}
STUDENTS = (
    "resnet18",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "mobilenet_v3_large_seed",
    "regnet_y_800mf",
    "mobilevit_s",
    "mobilenetv4_conv_small",
    "fastvit_t12",
)


HEAD_NORMS = ("none", "batchnorm")
# architectures whose head is the seed's kept torchvision classifier (method.md §2.3):
# GeM -> Linear(width -> hidden) -> Hardswish -> Dropout(0.2) -> Linear(hidden -> dims)
HIDDEN_HEADS = {"mobilenet_v3_large_seed": 1280}


class SeedHead(nn.Sequential):
    """The seed's MobileNetV3-L head (§2.3: 960 -> 1280 -> 512, 4.9 M parameters with the trunk):
    Linear, Hardswish, Dropout(0.2), Linear, initialised as torchvision initialises that
    classifier (normal(0, 0.01), zero bias). ``in_features``/``out_features`` as a Linear's."""

    def __init__(self, width: int, hidden: int, out: int):
        super().__init__(nn.Linear(width, hidden), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(hidden, out))
        for layer in (self[0], self[3]):
            nn.init.normal_(layer.weight, 0, 0.01)
            nn.init.zeros_(layer.bias)

    @property
    def in_features(self) -> int:
        return self[0].in_features

    @property
    def out_features(self) -> int:
        return self[3].out_features


def build_trunk(name: str) -> Trunk:
    """A registered trunk, or any timm model name prefixed with ``timm/``."""
    if name in TRUNKS:
        return TRUNKS[name]()
    if name.startswith("timm/"):
        return _timm(name.removeprefix("timm/"))
    raise ModelSpecError(
        f"unknown architecture {name!r}; known: {', '.join(TRUNKS)} (or timm/<any timm model>)"
    )


class EmbeddingModel(nn.Module):
    """trunk -> GeM(p) -> Linear(width -> dims) -> L2 (method.md §1.1). Input: normalised NCHW.

    ``mobilenet_v3_large_seed`` has the seed's head instead of the one Linear (``HIDDEN_HEADS``,
    §2.3): Linear(960 -> 1280), Hardswish, Dropout(0.2), Linear(1280 -> dims).

    Compact mode (§3.1, ``kd_dim`` set): the linear layer gives a ``kd_dim`` feature (the
    distillation target) and a projector maps it to the ``dims``-d descriptor.

    ``set_whitening`` appends a fixed affine map and a second L2 after the descriptor: the PCA
    whitening fitted on train images after training (train/whitening.py, docs/training.md).

    ``head_norm="batchnorm"`` puts a BatchNorm1d after the linear layer (before L2): it removes
    the component every image shares — a random trunk's GeM features are all positive, so a fresh
    student's descriptors start at cosine ≈ 0.9 to each other — which SSCD's head leaves for the
    loss to undo over many steps (docs/training.md). At inference it is a fixed affine map.
    """

    def __init__(self, arch: str, dims: int = 512, gem_p: float = GEM_P, kd_dim: int | None = None,
                 head_norm: str = "none"):
        super().__init__()
        trunk = build_trunk(arch)
        self.arch = arch
        self.dims = dims
        self.kd_dim = kd_dim
        self.trunk = trunk.module
        self.pool = GeM(gem_p)
        self.width = trunk.width
        if arch in HIDDEN_HEADS:
            self.fc = SeedHead(trunk.width, HIDDEN_HEADS[arch], kd_dim or dims)
        else:
            self.fc = nn.Linear(trunk.width, kd_dim or dims)
            nn.init.xavier_uniform_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
        if head_norm not in HEAD_NORMS:
            raise ModelSpecError(f"head_norm {head_norm!r}; use one of {', '.join(HEAD_NORMS)}")
        self.head_norm = head_norm
        self.head_bn = nn.BatchNorm1d(kd_dim or dims) if head_norm == "batchnorm" else None
        self.projector = nn.Linear(kd_dim, dims) if kd_dim else None
        self.norm = L2Norm()
        self.whitening: nn.Linear | None = None

    @property
    def feature_dim(self) -> int:
        return self.kd_dim or self.dims

    @property
    def out_dims(self) -> int:
        """The width of what ``forward`` returns: the whitening's when there is one."""
        return self.whitening.out_features if self.whitening is not None else self.dims

    def set_whitening(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """descriptor -> L2(weight @ descriptor + bias): a fixed map (never trained)."""
        out, width = weight.shape
        if width != self.dims or bias.shape != (out,):
            raise ModelSpecError(f"a whitening of shape {tuple(weight.shape)} + {tuple(bias.shape)} does "
                                 f"not fit a {self.dims}-d descriptor")
        layer = nn.Linear(width, out)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        self.whitening = layer.requires_grad_(False)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature, descriptor), both L2-normalised; the same tensor unless in compact mode."""
        feature = self.fc(self.pool(self.trunk(x)))
        if self.head_bn is not None:
            feature = self.head_bn(feature)
        if self.projector is None:
            descriptor = self.norm(feature)
            return descriptor, descriptor
        return self.norm(feature), self.norm(self.projector(feature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = self.features(x)[1]
        return descriptor if self.whitening is None else self.norm(self.whitening(descriptor))


class PixelModel(nn.Module):
    """uint8 NHWC RGB -> descriptors: the model with its normalisation inside (for export too)."""

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        self.input = PixelInput(*(a for a in (mean, std) if a is not None))
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.input(pixels))
