"""Every student trains and embeds on CPU (design.md "Models"; method.md §2.3, §3.1).

The seed's students (§2.3) mostly did not run as committed (ResNet-18, RegNet-Y, MobileViT were
broken); here each registered student is trunk -> GeM(3) -> Linear(width -> dims) -> L2, takes
one SGD step on a contrastive-style loss, and embeds through ``load_descriptor``. Compact mode
(§3.1) gives a ``kd_dim`` feature plus a projected ``dims`` descriptor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from copydistill.cli import main
from copydistill.models.backbones import STUDENTS, TRUNKS, EmbeddingModel
from copydistill.models.descriptor import ResizePolicy
from copydistill.models.registry import load_descriptor
from copydistill.models.summary import count_gflops

# Students whose step + embed test takes > ~10 s get the ``slow`` mark. On 2 otherwise idle cores
# every registered student takes 1-4 s (the whole file ~20 s), so none is marked; a new, larger
# student goes here.
SLOW_STUDENTS: set[str] = set()
FAST_STUDENTS = ("resnet18", "efficientnet_b0", "mobilenet_v3_large")  # must stay unmarked


def _student_params():
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW_STUDENTS else name
        for name in STUDENTS
    ]


def test_fast_students_are_registered_and_unmarked():
    assert set(FAST_STUDENTS) <= set(STUDENTS)
    assert not SLOW_STUDENTS & set(FAST_STUDENTS)
    assert set(STUDENTS) <= set(TRUNKS)


def _contrastive_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """-(mean positive cosine - mean off-diagonal cosine) between two views' unit descriptors."""
    sim = a @ b.T
    n = len(sim)
    positives = sim.diagonal().mean()
    negatives = (sim.sum() - sim.diagonal().sum()) / (n * n - n)
    return negatives - positives


def _images(sizes, seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("name", _student_params())
def test_student_trains_one_step_and_embeds(name):
    torch.manual_seed(0)
    model = EmbeddingModel(name, dims=32).train()
    assert model.fc.out_features == 32 and model.projector is None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}

    images = torch.randn(4, 3, 64, 64)
    view1 = model(images + 0.1 * torch.randn_like(images))
    view2 = model(images + 0.1 * torch.randn_like(images))
    assert view1.shape == (4, 32)
    torch.testing.assert_close(view1.norm(dim=1), torch.ones(4))
    loss = _contrastive_loss(view1, view2)
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    # gradients reach the head and the very first trunk layer
    first = next(p for p in model.trunk.parameters() if p.requires_grad)
    last = model.fc[-1] if isinstance(model.fc, torch.nn.Sequential) else model.fc  # the seed head's last Linear
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    assert first.grad is not None and first.grad.abs().sum() > 0
    optimizer.step()

    changed = [k for k, p in model.named_parameters() if not torch.equal(p.detach(), before[k])]
    assert "fc.weight" in changed or "fc.3.weight" in changed
    assert any(k.startswith("trunk.") for k in changed)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # the trained model still gives unit vectors in eval mode
    model.eval()
    with torch.no_grad():
        out = model(images[:2])
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))

    descriptor = load_descriptor(f"{name}:dims=32", resize="square:64")
    assert descriptor.dims == 32 and descriptor.resize == ResizePolicy("square", 64)
    vectors = descriptor.embed_images(_images([(64, 64), (80, 120), (50, 70)]))
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(vectors))


def test_compact_mode_feature_and_descriptor():
    torch.manual_seed(0)
    model = EmbeddingModel("resnet18", dims=64, kd_dim=128).eval()
    assert model.feature_dim == 128 and model.dims == 64
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feature, descriptor = model.features(x)
        raw = model.fc(model.pool(model.trunk(x)))  # the kd_dim classifier output (§3.1)
        forward = model(x)
    assert feature.shape == (3, 128) and descriptor.shape == (3, 64)
    torch.testing.assert_close(feature.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(descriptor.norm(dim=1), torch.ones(3))
    # ( L2(feat), L2(projector(feat)) ) with the projector on the un-normalised feature
    torch.testing.assert_close(feature, F.normalize(raw, dim=-1))
    torch.testing.assert_close(descriptor, F.normalize(model.projector(raw), dim=-1))
    torch.testing.assert_close(forward, descriptor)

    spec = load_descriptor("resnet18:dims=64,kd_dim=128", resize="square:64")
    assert spec.dims == 64
    assert spec.embed_batch(np.zeros((2, 64, 64, 3), np.uint8)).shape == (2, 64)


def test_plain_mode_feature_is_the_descriptor():
    torch.manual_seed(0)
    model = EmbeddingModel("resnet18", dims=48).eval()
    with torch.no_grad():
        feature, descriptor = model.features(torch.randn(2, 3, 64, 64))
    assert feature.shape == descriptor.shape == (2, 48)
    assert torch.equal(feature, descriptor)


def test_models_list_shows_every_student(capsys):
    assert main(["models", "list", "--no-flops"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    for name in STUDENTS:
        assert name in rows, f"{name} missing from `models list`"
        assert rows[name][1] == "student"
        assert float(rows[name][2]) > 0.5  # params (M)
    assert rows["resnet50"][1] == "teacher"
    assert "sscd-int8" in out


def test_resnet18_gflops_at_224():
    """ResNet-18 is 1.82 GMACs at 224 -> about 3.6 GFLOPs (multiply-add = 2 FLOPs)."""
    torch.manual_seed(0)
    gflops = count_gflops(EmbeddingModel("resnet18", dims=512), 224)
    assert abs(gflops - 3.6) / 3.6 < 0.10, gflops


def test_mobilenet_v3_large_seed_head_is_the_theses():
    """method.md §2.3: the seed keeps torchvision's classifier, 960 -> 1280 -> 512 after GeM,
    4.9 M parameters; our plain head is one Linear 960 -> 512 (3.5 M)."""
    from torch import nn

    seed = EmbeddingModel("mobilenet_v3_large_seed", dims=512)
    plain = EmbeddingModel("mobilenet_v3_large", dims=512)
    linears = [m for m in seed.fc if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(960, 1280), (1280, 512)]
    assert isinstance(seed.fc[1], nn.Hardswish) and seed.fc[2].p == 0.2
    params = sum(p.numel() for p in seed.parameters()) / 1e6
    assert 4.8 < params < 5.0
    assert 3.4 < sum(p.numel() for p in plain.parameters()) / 1e6 < 3.5
    out = seed.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 512) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_models_list_shows_the_seed_head_parameter_count():
    from copydistill.models.summary import model_table

    row = next(line for line in model_table(flops=False).splitlines() if line.startswith("mobilenet_v3_large_seed "))
    assert row.split()[1] == "student" and 4.8 < float(row.split()[2]) < 5.0
