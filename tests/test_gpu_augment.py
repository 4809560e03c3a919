"""The batched augmentation ops (augment/gpu.py), on CPU tensors: each op's probability and
parameter range as method.md §1.3 gives them (statistically, 4,000 draws: 4-σ bounds), each op
against its torchvision counterpart, and a fixed seed giving the same views."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from copydistill.augment.gpu import (GPUAugment, colour_jitter, crop_resize, decode_jpegs, gaussian_blur,
                                     grey, jpeg, sample_crops)

N = 4000


def _rate_ok(mask: torch.Tensor, p: float) -> bool:
    return abs(mask.float().mean().item() - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-12) / mask.numel()) + 1e-9


@pytest.fixture(scope="module")
def params():
    sizes = torch.tensor([[120, 160]] * N)
    return {s: GPUAugment(s, 32).sample(sizes, torch.Generator().manual_seed(0))
            for s in ("SIMCLR", "STRONG_BLUR", "ADVANCED")}


@pytest.mark.parametrize("setting", ["SIMCLR", "STRONG_BLUR", "ADVANCED"])
def test_probabilities_match_section_1_3(params, setting):
    p = params[setting]
    assert _rate_ok(p.flip, 0.0 if setting == "ADVANCED" else 0.5)  # ADVANCED flips before the crop, on the CPU
    assert _rate_ok(p.jitter, 0.8) and _rate_ok(p.grey, 0.2) and _rate_ok(p.blur, 0.5)
    assert _rate_ok(p.jpeg, 0.2 if setting == "ADVANCED" else 0.0)


@pytest.mark.parametrize("setting", ["SIMCLR", "STRONG_BLUR", "ADVANCED"])
def test_parameter_ranges_match_section_1_3(params, setting):
    p = params[setting]
    for k, (low, high) in enumerate([(0.2, 1.8), (0.2, 1.8), (0.2, 1.8), (-0.2, 0.2)]):
        f = p.factors[:, k]
        assert f.min() >= low and f.max() <= high
        assert f.min() < low + 0.01 * (high - low) and f.max() > high - 0.01 * (high - low)  # the whole range
        assert abs(f.mean().item() - (low + high) / 2) < 0.03 * (high - low)
    low, high = (0.1, 2.0) if setting == "SIMCLR" else (1.0, 5.0)
    assert p.sigma.min() >= low and p.sigma.max() <= high and p.sigma.max() > high - 0.01
    q = p.quality
    assert torch.equal(q, q.round()) and q.min() == 0 and q.max() == 100  # randint(0, 100), both ends
    assert sorted(p.order[0].tolist()) == [0, 1, 2, 3]
    first = torch.bincount(p.order[:, 0], minlength=4).float() / N  # each op first a quarter of the time
    assert torch.all((first - 0.25).abs() < 4 * math.sqrt(0.25 * 0.75 / N))


def test_crops_follow_torchvisions_random_resized_crop():
    height, width = 120, 160
    boxes = sample_crops(torch.tensor([[height, width]] * N), torch.Generator().manual_seed(1))
    x1, y1, x2, y2 = boxes.T
    assert torch.all((x1 >= 0) & (y1 >= 0) & (x2 <= width) & (y2 <= height) & (x2 > x1) & (y2 > y1))
    area = (x2 - x1) * (y2 - y1) / (height * width)
    aspect = (x2 - x1) / (y2 - y1)
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
    assert aspect.min() >= 0.75 - 0.05 and aspect.max() <= 4 / 3 + 0.05
    torch.manual_seed(1)
    image = torch.zeros(3, height, width)
    ref = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(N)],
                       dtype=torch.float64)
    ref_area = ref[:, 2] * ref[:, 3] / (height * width)
    assert abs(area.double().mean() - ref_area.mean()) < 0.02
    assert abs(area.double().std() - ref_area.std()) < 0.02
    ref_left = ref[:, 1] / (width - ref[:, 3] + 1).clamp(min=1)
    left = x1.double() / (width - (x2 - x1).double() + 1)
    assert abs(left.mean() - ref_left.mean()) < 0.03


def test_a_fixed_seed_gives_the_same_views_and_another_seed_others():
    images = [torch.randint(0, 256, (3, 40 + 8 * i, 56), dtype=torch.uint8) for i in range(4)]
    aug = GPUAugment("ADVANCED", 24)
    a = aug(images, torch.Generator().manual_seed(5))
    b = aug(images, torch.Generator().manual_seed(5))
    c = aug(images, torch.Generator().manual_seed(6))
    assert a.shape == (4, 3, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_colour_ops_match_torchvision():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 20)
    factors = torch.tensor([[1.5, 0.6, 1.3, 0.1], [0.4, 1.7, 0.2, -0.15], [1.0, 1.0, 1.8, 0.2]])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
    got = colour_jitter(x, factors, order)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(3):
        y = x[i]
        for k in order[i].tolist():
            y = ops[k](y, float(factors[i, k]))
        assert torch.allclose(got[i], y, atol=1e-5), i
    assert torch.allclose(grey(x), TF.rgb_to_grayscale(x), atol=1e-6)


def test_blur_matches_torchvision_and_jpeg_quality_orders_the_error():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 40)
    sigma = torch.tensor([1.0, 3.0])
    got = gaussian_blur(x, sigma)
    for i, s in enumerate(sigma.tolist()):
        ref = TF.gaussian_blur(x[i], kernel_size=[19, 19], sigma=[s, s])  # 2·ceil(3·3)+1 for both
        assert torch.allclose(got[i], ref, atol=1e-5)
    smooth = TF.gaussian_blur(x, kernel_size=[9, 9], sigma=[2.0, 2.0])
    errors = (jpeg(smooth.repeat(3, 1, 1, 1), torch.tensor([100., 100., 50., 50., 0., 0.])) - smooth.repeat(3, 1, 1, 1))
    err = errors.abs().mean(dim=(1, 2, 3))
    assert err[0] < err[2] < err[4] and err[0] < 0.02


def test_crop_resize_at_scale_one_is_the_crop_and_decode_jpegs_matches_pil():
    image = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    other = torch.randint(0, 256, (3, 44, 20), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 5.0, 26.0, 21.0], [2.0, 20.0, 18.0, 36.0]])
    out = crop_resize([image, other], boxes, 16)
    assert torch.allclose(out[0], image[:, 5:21, 10:26].float() / 255, atol=1e-6)
    assert torch.allclose(out[1], other[:, 20:36, 2:18].float() / 255, atol=1e-6)
    files = []
    for seed in range(2):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(
            buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    decoded = decode_jpegs(files)
    for data, tensor in zip(files, decoded, strict=True):
        pil = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert tensor.shape == pil.shape and (tensor.int() - pil.int()).abs().max() <= 2


# --------------------------------------------------------------------------------------------
# augment_device: gpu in a real (CPU) training run
# --------------------------------------------------------------------------------------------

TINY = ["arch=mobilenetv4_conv_small", "dims=32", "image_size=32", "batch_size=4", "workers=0",
        "sync_bn=false", "accelerator=cpu", "devices=1", "precision=32-true", "log_every_n_steps=1",
        "warmup_epochs=1", "epochs=1", "max_steps=2", "export=[]", "seed=0", "augment_device=gpu"]


@pytest.fixture(scope="module")
def train_images(tmp_path_factory):
    from copydistill.data.procedural import procedural_image

    folder = tmp_path_factory.mktemp("gpu_views_images")
    for i in range(10):
        procedural_image(i, long_side=(64, 96)).save(folder / f"{i:03d}.jpg", quality=90)
    Image.new("RGBA", (70, 50), (10, 200, 30, 255)).save(folder / "010.png")  # not a JPEG: decoded by PIL
    return folder


def test_sources_are_jpeg_bytes_or_pre_cropped_images(train_images):
    from copydistill.augment.sscd import SSCDAugment
    from copydistill.train.gpu_views import DeviceViews, TwoViewSources, collate_sources

    blur = TwoViewSources(train_images, SSCDAugment("STRONG_BLUR", 32), seed=0)
    items = [blur[(0, i)] for i in range(len(blur))]
    assert sum("jpeg" in i for i in items) == 10 and sum("sources" in i for i in items) == 1
    advanced = TwoViewSources(train_images, SSCDAugment("ADVANCED", 32), seed=0)
    assert "sources" in advanced[(0, 0)] and advanced[(0, 0)]["sources"][0].dtype == torch.uint8
    views = DeviceViews(GPUAugment("STRONG_BLUR", 32), seed=0)
    batch = collate_sources(items[-4:])
    out = views(dict(batch), torch.device("cpu"), epoch=0, step=0, rank=0)
    again = views(dict(batch), torch.device("cpu"), epoch=0, step=0, rank=0)
    later = views(dict(batch), torch.device("cpu"), epoch=0, step=1, rank=0)
    assert out["views"].shape == (4, 2, 3, 32, 32) and torch.equal(out["views"], again["views"])
    assert not torch.equal(out["views"], later["views"])
    assert not torch.equal(out["views"][:, 0], out["views"][:, 1])  # two different views per image


@pytest.mark.parametrize("setting", ["STRONG_BLUR", "ADVANCED"])
def test_training_with_augment_device_gpu_is_reproducible(train_images, tmp_path, setting):
    from copydistill.config import load_config
    from copydistill.train.run import train

    torch.set_num_threads(1)
    runs = []
    for name in ("a", "b"):
        out = train(load_config(None, [f"train_images={train_images}", f"out_dir={tmp_path / name}",
                                       f"augmentations={setting}", *TINY]), progress=False)
        runs.append(torch.load(out / "final" / "student.pt")["state_dict"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_augment_device_gpu_refuses_cached_views():
    from copydistill.config import load_config
    from copydistill.errors import CopydistillError

    with pytest.raises(CopydistillError, match="cached_views"):
        load_config(None, ["augment_device=gpu", "cached_views=2"])
    with pytest.raises(CopydistillError, match="augment_device"):
        load_config(None, ["augment_device=tpu"])
