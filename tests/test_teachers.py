"""Teacher loaders from published weight files.

design.md "Models"; method.md §1.1, §2.2, §3.2, §2.8.

No real weights can be downloaded here, so every test writes the file itself in the official
layout from a seeded, randomly initialised model, loads it through ``load_descriptor`` and checks
that the loaded descriptor reproduces the in-memory model:

* SSCD ``.torchvision.pt``: ``SSCDResNet50().state_dict()`` (keys ``backbone.*``, including
  ``backbone.fc.{weight,bias}`` 2048 -> dims), saved with ``torch.save``;
* SSCD ``.torchscript.pt``: a scripted / traced module taking ImageNet-normalised float NCHW;
* DINO ViT-B/16: timm ``vit_base_patch16_224`` state dict (DINO's ``vision_transformer.py`` uses
  the same names: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``),
  as the plain backbone file, as DINO's full training checkpoint (``teacher`` = ``backbone.*`` +
  ``head.*``) and with DDP's ``module.backbone.`` prefix.

Random init is perturbed (BN statistics, LayerNorm affine, zero-init residual gammas) so that every
tensor in the file changes the output: a loader that skipped a key would be caught.
ViT-B is 86M parameters: its checkpoint is saved once per module and only a few forwards run.
"""

from __future__ import annotations

import argparse
import copy
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from copydistill.errors import ModelSpecError
from copydistill.models.backbones import PixelModel
from copydistill.models.descriptor import ResizePolicy
from copydistill.models.gem import PixelInput
from copydistill.models.export import synthetic_pixels
from copydistill.models.registry import load_descriptor
from copydistill.models.teachers import FrozenTeacher, SSCDResNet50, load_weights
from copydistill.models.torch_descriptor import TorchDescriptor

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning"),  # torch.jit.* deprecations
    pytest.mark.usefixtures("drop_big_files"),
]



def _pixels(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return synthetic_pixels(height, width, n=n, seed=seed, noise=25)


def _as_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> ImageNet-normalised float NCHW (what SSCD's and DINO's models take)."""
    return PixelInput()(torch.from_numpy(pixels))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _assert_unit(vectors: np.ndarray) -> None:
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@torch.no_grad()
def _perturb_batchnorm(model: nn.Module, seed: int) -> None:
    """Random BN affine and running stats, so zero-init residual gammas do not hide weights."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.05)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 0.5 + 0.75)


# --------------------------------------------------------------------------------------------
# SSCD ResNet-50, torchvision format
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sscd_model():
    torch.manual_seed(0)
    model = SSCDResNet50()
    _perturb_batchnorm(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def sscd_state(sscd_model):
    return {k: v.clone() for k, v in sscd_model.state_dict().items()}


@pytest.fixture(scope="module")
def sscd_file(sscd_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("sscd") / "sscd_disc_mixup.torchvision.pt"
    torch.save(sscd_state, path)
    yield path
    path.unlink(missing_ok=True)


def _reference(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """The in-memory model wrapped as the registry wraps a teacher (pixels in, frozen, L2)."""
    wrapped = TorchDescriptor(
        PixelModel(FrozenTeacher(copy.deepcopy(model))), "ref", 0, ResizePolicy("square", 64), "ref"
    )
    return wrapped.embed_batch(pixels)


def test_sscd_file_layout_is_sscds(sscd_state):
    """The file we write has SSCD's .torchvision.pt layout (method.md §1.1)."""
    assert all(k.startswith("backbone.") for k in sscd_state)
    assert sscd_state["backbone.fc.weight"].shape == (512, 2048)
    assert sscd_state["backbone.fc.bias"].shape == (512,)
    assert "backbone.layer4.2.bn3.running_var" in sscd_state


def test_sscd_torchvision_round_trip(sscd_model, sscd_state, sscd_file):
    descriptor = load_descriptor(f"sscd-torchvision:{sscd_file}", resize="square:64")
    assert descriptor.dims == 512
    assert descriptor.resize == ResizePolicy("square", 64)

    # every tensor of the file arrived unchanged
    teacher = descriptor.module.model
    assert isinstance(teacher, FrozenTeacher)
    loaded = teacher.model.state_dict()
    assert set(loaded) == set(sscd_state)
    for key, value in sscd_state.items():
        assert torch.equal(loaded[key], value), key

    # frozen, eval mode
    assert not any(p.requires_grad for p in descriptor.module.parameters())
    assert not any(m.training for m in descriptor.module.modules())

    pixels = _pixels(3, 64, 64)
    ours = descriptor.embed_batch(pixels)
    assert ours.shape == (3, 512)
    _assert_unit(ours)
    assert _cosines(ours, _reference(sscd_model, pixels)).min() > 0.9999
    with torch.no_grad():
        direct = F.normalize(sscd_model(_as_input(pixels)), dim=-1).numpy()
    assert _cosines(ours, direct).min() > 0.9999
    # the vectors depend on the image (a degenerate model would pass the checks above)
    assert _cosines(ours[:1], ours[1:2])[0] < 0.9999

    # the resize policy is applied by prepare(): any image becomes 64x64
    from PIL import Image

    image = Image.fromarray(_pixels(1, 90, 120)[0])
    assert descriptor.prepare(image).shape == (64, 64, 3)
    _assert_unit(descriptor.embed_images([image]))


def test_sscd_torchvision_dims_follow_the_file(sscd_model, sscd_state, tmp_path):
    """A 1024-d fc (e.g. another SSCD head width) gives a 1024-d descriptor."""
    gen = torch.Generator().manual_seed(3)
    state = dict(sscd_state)
    state["backbone.fc.weight"] = torch.randn(1024, 2048, generator=gen) * 0.02
    state["backbone.fc.bias"] = torch.randn(1024, generator=gen) * 0.01
    path = tmp_path / "wide.torchvision.pt"
    torch.save(state, path)

    descriptor = load_descriptor(f"sscd-torchvision:{path}", resize="square:64")
    assert descriptor.dims == 1024
    pixels = _pixels(2, 64, 64, seed=5)
    ours = descriptor.embed_batch(pixels)
    assert ours.shape == (2, 1024)
    _assert_unit(ours)

    wide = copy.deepcopy(sscd_model)
    wide.backbone.fc = nn.Linear(2048, 1024)
    wide.backbone.fc.load_state_dict(
        {"weight": state["backbone.fc.weight"], "bias": state["backbone.fc.bias"]}
    )
    assert _cosines(ours, _reference(wide, pixels)).min() > 0.9999
    path.unlink()


def _save(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def test_sscd_torchvision_missing_key(sscd_state, tmp_path):
    state = dict(sscd_state)
    del state["backbone.layer3.0.conv2.weight"]
    path = _save(tmp_path, "missing.pt", state)
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"sscd-torchvision:{path}")
    message = str(err.value)
    assert path in message
    assert "missing keys" in message and "backbone.layer3.0.conv2.weight" in message
    assert ".torchvision.pt" in message  # says what was expected


def test_sscd_torchvision_extra_key(sscd_state, tmp_path):
    state = dict(sscd_state)
    state["backbone.layer5.0.conv1.weight"] = torch.zeros(1)
    path = _save(tmp_path, "extra.pt", state)
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"sscd-torchvision:{path}")
    message = str(err.value)
    assert path in message
    assert "unexpected keys" in message and "backbone.layer5.0.conv1.weight" in message


def test_sscd_torchvision_refuses_classy_trunk_checkpoint(tmp_path):
    """A Classy Vision checkpoint (``trunk.*`` keys) passed as torchvision says so."""
    state = {
        "trunk.initial_block._module.0.weight": torch.zeros(64, 3, 7, 7),
        "trunk.blocks.0.block0-0._module.conv1.weight": torch.zeros(64, 64, 1, 1),
        "heads.embedding.fc.weight": torch.zeros(512, 2048),
    }
    path = _save(tmp_path, "sscd_disc_mixup.classy.pt", state)
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"sscd-torchvision:{path}")
    message = str(err.value)
    assert "Classy" in message and ".torchvision.pt" in message and path in message


def test_sscd_torchvision_refuses_sscd_classy_layout(tmp_path):
    """SSCD's .classy.pt = state_dict of Model('CV_RESNET50', 512, 3): backbone = Classy ResNet,
    embeddings = Sequential(GeM, Linear(2048 -> 512), L2Norm)."""
    state = {
        "backbone.initial_block._module.0.weight": torch.zeros(64, 3, 7, 7),
        "backbone.blocks.0.0._module.conv1.weight": torch.zeros(64, 64, 1, 1),
        "embeddings.1.weight": torch.zeros(512, 2048),
        "embeddings.1.bias": torch.zeros(512),
    }
    path = _save(tmp_path, "sscd_disc_mixup.classy.pt", state)
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"sscd-torchvision:{path}")
    assert "Classy" in str(err.value)


def test_sscd_torchvision_refuses_plain_torchvision_resnet(tmp_path):
    """An ImageNet torchvision ResNet-50 (no ``backbone.`` prefix) is named as not SSCD's layout."""
    state = {
        "conv1.weight": torch.zeros(64, 3, 7, 7),
        "fc.weight": torch.zeros(1000, 2048),
        "fc.bias": torch.zeros(1000),
    }
    path = _save(tmp_path, "resnet50.pth", state)
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"sscd-torchvision:{path}")
    message = str(err.value)
    assert "backbone.fc.weight" in message and "backbone." in message and "fc.weight" in message


def test_sscd_torchvision_wrong_fc_width(sscd_state, tmp_path):
    """fc trained on another trunk width (e.g. 1024 in-features) fails with a clear message."""
    state = dict(sscd_state)
    state["backbone.fc.weight"] = torch.zeros(512, 1024)
    path = _save(tmp_path, "wrong_width.pt", state)
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"sscd-torchvision:{path}")
    message = str(err.value)
    assert "backbone.fc.weight" in message and "2048" in message


def _truncated_checkpoint(tmp_path) -> bytes:
    torch.save({"backbone.fc.weight": torch.zeros(64, 64)}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    return data[: len(data) // 2]




@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param(
            b"this is not a checkpoint",
            "not a PyTorch weights file",
            
            id="garbage",
        ),
        pytest.param(_truncated_checkpoint, "not a PyTorch weights file", id="truncated"),
        pytest.param([torch.zeros(2)], "expected a state dict", id="list"),
    ],
)
def test_sscd_torchvision_not_a_state_dict(tmp_path, content, expected):
    path = tmp_path / "weights.pt"
    if callable(content):
        content = content(tmp_path)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ModelSpecError, match=expected) as err:
        load_descriptor(f"sscd-torchvision:{path}")
    assert str(path) in str(err.value)


def test_teacher_file_not_found(tmp_path):
    for kind in ("sscd-torchvision", "dino-vitb16", "sscd-torchscript"):
        with pytest.raises(ModelSpecError, match="not found"):
            load_descriptor(f"{kind}:{tmp_path / 'nope.pt'}")


# --------------------------------------------------------------------------------------------
# SSCD TorchScript
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["script", "trace"])
def test_sscd_torchscript_round_trip(sscd_model, tmp_path, how):
    """SSCD's .torchscript.pt takes ImageNet-normalised float NCHW; the loader normalises pixels."""
    model = copy.deepcopy(sscd_model).eval()
    with torch.no_grad():
        if how == "script":
            module = torch.jit.script(model)
        else:
            module = torch.jit.trace(model, torch.randn(2, 3, 64, 64), check_trace=False)
    path = tmp_path / "sscd_disc_mixup.torchscript.pt"
    torch.jit.save(module, str(path))

    pixels = _pixels(3, 64, 64, seed=7)
    expected = _reference(sscd_model, pixels)
    for kind in ("sscd-torchscript", "torchscript"):
        descriptor = load_descriptor(f"{kind}:{path}", resize="square:64")
        assert descriptor.dims == 512
        assert descriptor.resize == ResizePolicy("square", 64)
        ours = descriptor.embed_batch(pixels)
        _assert_unit(ours)
        assert _cosines(ours, expected).min() > 0.9999
    # another size than the one traced at
    other = _pixels(2, 96, 80, seed=8)
    assert _cosines(descriptor.embed_batch(other), _reference(sscd_model, other)).min() > 0.9999


# --------------------------------------------------------------------------------------------
# Malicious pickles
# --------------------------------------------------------------------------------------------


class _Evil:
    """A pickle payload that runs a shell command when unpickled without weights_only."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


@pytest.fixture()
def evil_file(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"backbone.fc.weight": torch.zeros(2, 2), "payload": _Evil(target)}, path)
    # the file really carries the code (checked without running it)
    with zipfile.ZipFile(path) as archive:
        pickled = b"".join(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    assert b"system" in pickled and b"touch" in pickled
    return path, target


@pytest.mark.parametrize("kind", ["sscd-torchvision", "dino-vitb16"])
def test_malicious_pickle_is_refused(evil_file, kind):
    path, target = evil_file
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"{kind}:{path}")
    assert "refused" in str(err.value)
    assert str(path) in str(err.value)
    assert not target.exists()


def test_load_weights_refuses_code(evil_file):
    path, target = evil_file
    with pytest.raises(ModelSpecError, match="refused"):
        load_weights(path)
    assert not target.exists()


# --------------------------------------------------------------------------------------------
# FrozenTeacher
# --------------------------------------------------------------------------------------------


def _tiny_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
    )


def test_frozen_teacher_no_grad_and_always_eval():
    teacher = FrozenTeacher(_tiny_bn_net())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.train() is teacher
    assert not any(m.training for m in teacher.modules())
    teacher.train(True)
    assert not any(m.training for m in teacher.modules())

    # Lightning calls train() on the whole LightningModule: the student trains, the teacher does not
    parent = nn.ModuleDict({"student": nn.BatchNorm1d(4), "teacher": teacher})
    parent.train()
    assert parent["student"].training
    assert not any(m.training for m in teacher.modules())

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad


def test_frozen_teacher_keeps_bn_running_stats_and_normalises():
    net = _tiny_bn_net()
    with torch.no_grad():  # an un-normalised output scale, to see FrozenTeacher's L2
        net[-1].weight.mul_(50.0)
    bn = net[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    teacher = FrozenTeacher(net)
    teacher.train()
    for seed in range(3):
        torch.manual_seed(seed)
        out = teacher(torch.randn(4, 3, 8, 8) * 3 + 1)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    assert torch.equal(bn.running_mean, before[0])
    assert torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])


def test_frozen_sscd_teacher_bn_stats_unchanged(sscd_model):
    model = copy.deepcopy(sscd_model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    teacher = FrozenTeacher(model)
    teacher.train()
    out = teacher(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    for key, value in model.state_dict().items():
        if key in stats:
            assert torch.equal(value, stats[key]), key


# --------------------------------------------------------------------------------------------
# DINO ViT-B/16
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino_vit():
    """timm ViT-B/16 with seeded, perturbed weights (LayerNorms no longer at their init values)."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return vit.eval()


@pytest.fixture(scope="module")
def dino_state(dino_vit):
    return dino_vit.state_dict()


@pytest.fixture(scope="module")
def dino_file(dino_state, tmp_path_factory):
    """DINO's published backbone file (dino_vitbase16_pretrain.pth): a plain state dict."""
    path = tmp_path_factory.mktemp("dino") / "dino_vitbase16_pretrain.pth"
    torch.save(dino_state, path)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def fast_vit_init(dino_vit):
    """Skip timm's ViT weight init (4 of the 5 s a ViT-B takes to build on 2 cores) while the
    loader builds its model: every tensor is then overwritten from the file, which
    ``_assert_same_weights`` checks key by key. Depends on ``dino_vit`` so the reference model
    is always built with the real, seeded init."""
    from timm.models.vision_transformer import VisionTransformer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VisionTransformer, "init_weights", lambda self, *args, **kwargs: None)
        yield


@pytest.fixture(scope="module")
def dino_descriptor(dino_file, dino_state, fast_vit_init):
    descriptor = load_descriptor(f"dino-vitb16:{dino_file}")
    _assert_same_weights(descriptor, dino_state)
    return descriptor


def _gem_descriptor(tokens: torch.Tensor, p: float = 3.0) -> np.ndarray:
    cls, patches = tokens[:, 0], tokens[:, 1:]
    gem = patches.clamp(min=1e-6).pow(p).mean(dim=1).pow(1.0 / p)
    return F.normalize(torch.cat([cls, gem], dim=-1), dim=-1).numpy()


def _vit_tokens_any_size(vit, x: torch.Tensor) -> torch.Tensor:
    """timm's forward_features at any size divisible by 16, written out with the position
    embeddings resampled bicubically (antialiased) from the 14x14 grid, timm's convention."""
    tokens = vit.patch_embed.proj(x)  # (B, C, h, w)
    h, w = tokens.shape[-2:]
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = vit.pos_embed
    grid = pos[:, 1:]
    if (h, w) != (14, 14):
        grid = grid.reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
    tokens = torch.cat([vit.cls_token.expand(len(x), -1, -1), tokens], dim=1)
    tokens = tokens + torch.cat([pos[:, :1], grid], dim=1)
    tokens = vit.blocks(vit.norm_pre(tokens))
    return vit.norm(tokens)


def _assert_same_weights(descriptor, state: dict) -> None:
    loaded = descriptor.module.model.model.vit.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_dino_key_names_are_dinos(dino_state):
    """DINO's VisionTransformer (vision_transformer.py) names its tensors exactly like timm's."""
    top = {k for k in dino_state if not k.startswith("blocks.")}
    assert top == {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    block = {k.removeprefix("blocks.0.") for k in dino_state if k.startswith("blocks.0.")}
    assert block == {
        f"{m}.{p}"
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    }
    assert len([k for k in dino_state if k.endswith(".attn.qkv.weight")]) == 12


def test_dino_plain_checkpoint_224(dino_descriptor, dino_vit):
    descriptor = dino_descriptor
    assert descriptor.dims == 1536
    assert descriptor.resize == ResizePolicy("short", 288)  # the default policy
    assert not any(p.requires_grad for p in descriptor.module.parameters())
    assert not any(m.training for m in descriptor.module.modules())

    pixels = _pixels(3, 224, 224, seed=11)
    ours = descriptor.embed_batch(pixels)
    assert ours.shape == (3, 1536)
    _assert_unit(ours)
    x = _as_input(pixels)
    with torch.no_grad():
        tokens = dino_vit.forward_features(x)  # (3, 197, 768), timm's own path
        expected = _gem_descriptor(tokens)
        # the hand-written token path used at other sizes equals timm's where both apply
        torch.testing.assert_close(
            _vit_tokens_any_size(dino_vit, x[:1]), tokens[:1], atol=1e-4, rtol=1e-4
        )
    assert _cosines(ours, expected).min() > 0.9999
    assert _cosines(ours[:1], ours[1:2])[0] < 0.9999

    # batch size 1 gives the same vector as inside a batch of 3
    single = descriptor.embed_batch(pixels[1:2])
    assert single.shape == (1, 1536)
    assert _cosines(single, ours[1:2])[0] > 0.9999


@pytest.mark.parametrize("height, width, n", [(288, 288, 2), (288, 352, 1)], ids=["288", "288x352"])
def test_dino_other_sizes(dino_descriptor, dino_vit, height, width, n):
    pixels = _pixels(n, height, width, seed=height + width)
    ours = dino_descriptor.embed_batch(pixels)
    assert ours.shape == (n, 1536)
    _assert_unit(ours)
    with torch.no_grad():
        expected = _gem_descriptor(_vit_tokens_any_size(dino_vit, _as_input(pixels)))
    assert _cosines(ours, expected).min() > 0.9999


def test_dino_short_side_288_policy(dino_descriptor):
    """The default policy (short side 288) turns a 4:3 photo into a 288x384 input."""
    from PIL import Image

    image = Image.fromarray(_pixels(1, 150, 200, seed=2)[0])
    assert dino_descriptor.prepare(image).shape == (288, 384, 3)


def test_dino_full_training_checkpoint(dino_state, tmp_path, fast_vit_init):
    """DINO's checkpoint.pth: ``teacher`` = MultiCropWrapper(backbone, DINOHead) state dict."""
    head = {
        "head.mlp.0.weight": torch.randn(32, 768),
        "head.mlp.0.bias": torch.zeros(32),
        "head.mlp.2.weight": torch.randn(16, 32),
        "head.mlp.2.bias": torch.zeros(16),
        "head.last_layer.weight_g": torch.ones(64, 1),
        "head.last_layer.weight_v": torch.randn(64, 16),
    }
    checkpoint = {
        "teacher": {**{f"backbone.{k}": v for k, v in dino_state.items()}, **head},
        "student": {"module.backbone.cls_token": torch.zeros(1, 1, 768)},
        "epoch": 100,
        "dino_loss": {"center": torch.zeros(1, 64)},
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    descriptor = load_descriptor(f"dino-vitb16:{path}")
    assert descriptor.dims == 1536
    _assert_same_weights(descriptor, dino_state)
    path.unlink()


def test_dino_module_backbone_prefix(dino_state, tmp_path, fast_vit_init):
    """A DDP-wrapped student (``module.backbone.*``, ``module.head.*``) loads too."""
    state = {f"module.backbone.{k}": v for k, v in dino_state.items()}
    state["module.head.mlp.0.weight"] = torch.randn(8, 768)
    path = tmp_path / "student.pth"
    torch.save(state, path)
    descriptor = load_descriptor(f"dino-vitb16:{path}")
    _assert_same_weights(descriptor, dino_state)
    path.unlink()


def test_dino_full_checkpoint_with_args_namespace(dino_state, tmp_path, fast_vit_init):
    checkpoint = {
        "teacher": {f"backbone.{k}": v for k, v in dino_state.items()},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_base", patch_size=16, out_dim=65536),
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    try:
        descriptor = load_descriptor(f"dino-vitb16:{path}")
        _assert_same_weights(descriptor, dino_state)
    finally:
        path.unlink()


def test_dino_vitb8_pos_embed_is_a_clear_error(tmp_path, fast_vit_init):
    """ViT-B/8 (as RDCD actually builds, method.md §3.2): 28x28+1 position embeddings."""
    state = {
        "cls_token": torch.zeros(1, 1, 768),
        "pos_embed": torch.zeros(1, 28 * 28 + 1, 768),
        "patch_embed.proj.weight": torch.zeros(768, 3, 8, 8),
        "patch_embed.proj.bias": torch.zeros(768),
    }
    path = _save(tmp_path, "dino_vitbase8_pretrain.pth", state)
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"dino-vitb16:{path}")
    message = str(err.value)
    assert path in message
    assert "(1, 785, 768)" in message and "(1, 197, 768)" in message
    assert "ViT-B/8" in message


def test_dino_rejects_a_resnet_checkpoint(sscd_file, fast_vit_init):
    """An SSCD ResNet-50 file passed as DINO: missing/unexpected keys named, timm names expected."""
    with pytest.raises(ModelSpecError) as err:
        load_descriptor(f"dino-vitb16:{sscd_file}")
    message = str(err.value)
    assert str(sscd_file) in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "ViT-B/16" in message


def test_torch_teacher_channels_last_input_gives_the_same_keys():
    """channels_last (the student's layout on a GPU, docs/training.md): the teacher's pixels are
    NHWC in memory, so its normalised input is channels_last-strided, and the keys do not change."""
    import torch

    from copydistill.models.backbones import EmbeddingModel, PixelModel
    from copydistill.train.teacher import TorchTeacher

    torch.manual_seed(0)
    teacher = TorchTeacher(PixelModel(EmbeddingModel("resnet18", dims=16)).eval(), 16)
    views = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    cpu = torch.device("cpu")
    nhwc = teacher.pixels(views, cpu, channels_last=True)
    normalised = teacher.module.input(nhwc)
    assert normalised.is_contiguous(memory_format=torch.channels_last)
    assert not teacher.module.input(teacher.pixels(views, cpu, channels_last=False)).is_contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        a = teacher.module(nhwc)
        b = teacher.module(teacher.pixels(views, cpu, channels_last=False))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(teacher.keys(views, cpu), torch.nn.functional.normalize(b, dim=1), atol=1e-5)
