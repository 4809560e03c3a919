"""``copydistill export``: ONNX / TorchScript students that load back as Descriptors.

The exported file takes uint8 RGB NHWC pixels, normalises inside, runs in ONNX Runtime (or
TorchScript) and matches the torch model (cosine >= 0.999) at sizes other than those the export
verified; its metadata carries the resize policy, so ``onnx:FILE`` / ``torchscript:FILE`` load with
the right preprocessing (design.md "Models", "The one idea").
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from copydistill.cli import main
from copydistill.errors import ModelSpecError
from copydistill.models.backbones import STUDENTS
from copydistill.models.descriptor import ResizePolicy
from copydistill.models.onnx_descriptor import OnnxDescriptor
from copydistill.models.export import export_descriptor, synthetic_pixels
from copydistill.models.registry import load_descriptor
from copydistill.models.torch_descriptor import TorchDescriptor

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning"),  # torch.jit.* deprecations
    pytest.mark.usefixtures("drop_big_files"),
]



def _pixels(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return synthetic_pixels(height, width, n=n, seed=seed, noise=25)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def _export(capsys, *args: str) -> tuple[int, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["export", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# sizes the export itself did not verify (export checks 224x288 and 256x256)
CHECK_SIZES = ((3, 160, 208), (2, 97, 131))


def test_export_onnx_round_trip(tmp_path, capsys):
    out = tmp_path / "models" / "r18.onnx"  # the folder is created
    rc, stdout, stderr = _export(
        capsys,
        "--model",
        "resnet18:dims=32",
        "--format",
        "onnx",
        "--out",
        str(out),
        "--resize",
        "short:224",
    )
    assert rc == 0, stderr
    assert out.is_file() and f"onnx:{out}" in stdout
    assert _leftovers(out.parent) == []

    descriptor = load_descriptor(f"onnx:{out}")
    assert isinstance(descriptor, OnnxDescriptor)
    assert descriptor.layout == "uint8_nhwc"
    assert descriptor.dims == 32
    assert descriptor.resize == ResizePolicy("short", 224)  # the stored policy, not the default
    assert load_descriptor(f"onnx:{out}", resize="square:96").resize == ResizePolicy("square", 96)

    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["copydistill"])
    assert meta["resize"] == "short:224" and meta["dims"] == 32 and meta["input"] == "uint8_nhwc"
    assert meta["model"] == "resnet18:dims=32"

    torch_descriptor = load_descriptor("resnet18:dims=32")
    for n, h, w in CHECK_SIZES:
        pixels = _pixels(n, h, w, seed=h)
        ours = descriptor.embed_batch(pixels)
        assert ours.shape == (n, 32) and ours.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        assert _min_cosine(ours, torch_descriptor.embed_batch(pixels)) >= 0.999


def test_export_torchscript_round_trip(tmp_path, capsys):
    out = tmp_path / "r18.pt"
    rc, stdout, stderr = _export(
        capsys,
        "--model",
        "resnet18:dims=32",
        "--format",
        "torchscript",
        "--out",
        str(out),
        "--resize",
        "square:200",
    )
    assert rc == 0, stderr
    assert out.is_file() and f"torchscript:{out}" in stdout
    assert _leftovers(tmp_path) == []

    descriptor = load_descriptor(f"torchscript:{out}")
    assert isinstance(descriptor, TorchDescriptor)
    assert descriptor.dims == 32
    assert descriptor.resize == ResizePolicy("square", 200)
    torch_descriptor = load_descriptor("resnet18:dims=32")
    for n, h, w in CHECK_SIZES:
        pixels = _pixels(n, h, w, seed=w)
        ours = descriptor.embed_batch(pixels)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        assert _min_cosine(ours, torch_descriptor.embed_batch(pixels)) >= 0.999


def test_export_default_resize_policy_is_stored(tmp_path, capsys):
    out = tmp_path / "r18.onnx"
    rc, _, stderr = _export(
        capsys, "--model", "resnet18:dims=16", "--out", str(out)
    )  # onnx default
    assert rc == 0, stderr
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["copydistill"])["resize"] == "short:288"
    assert load_descriptor(f"onnx:{out}").resize == ResizePolicy("short", 288)


def test_export_mobilevit_falls_back_to_fixed_square(tmp_path, capsys):
    """timm's MobileViT bakes the traced size into reshapes: the export falls back to one square
    size, records ``square:S``, and the file still matches torch at that size."""
    out = tmp_path / "mvit.onnx"
    with pytest.warns(UserWarning, match="dynamic-size export failed"):
        rc = main(
            [
                "export",
                "--model",
                "mobilevit_s:dims=32",
                "--format",
                "onnx",
                "--out",
                str(out),
                "--resize",
                "short:128",
            ]
        )
    stderr = capsys.readouterr().err
    assert rc == 0, stderr
    assert _leftovers(tmp_path) == []

    descriptor = load_descriptor(f"onnx:{out}")
    assert descriptor.resize == ResizePolicy("square", 128)
    pixels = _pixels(3, 128, 128, seed=1)
    ours = descriptor.embed_batch(pixels)
    reference = load_descriptor("mobilevit_s:dims=32").embed_batch(pixels)
    assert _min_cosine(ours, reference) >= 0.999


@pytest.mark.parametrize("spec", ["phash", "sscd-int8"])
def test_export_non_torch_model_is_a_clear_error(tmp_path, capsys, spec):
    out = tmp_path / "x.onnx"
    rc, _, stderr = _export(capsys, "--model", spec, "--out", str(out))
    assert rc == 2
    assert "not a PyTorch model" in stderr and spec in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and _leftovers(tmp_path) == []


def test_export_non_torch_model_does_not_try_the_fixed_size_fallback(tmp_path):
    descriptor = load_descriptor("phash")
    policy = descriptor.resize
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelSpecError, match="not a PyTorch model"):
            export_descriptor(descriptor, "onnx", tmp_path / "x.onnx")
    assert not [w for w in caught if "dynamic-size export failed" in str(w.message)]
    assert descriptor.resize == policy


def test_export_unknown_format_is_rejected_by_the_parser(tmp_path, capsys):
    code = main(["export", "--model", "resnet18", "--format", "tflite", "--out", str(tmp_path / "x")])
    assert code == 2  # main returns the parser's exit code, as for every other error
    err = capsys.readouterr().err
    assert "tflite" in err and len(err.strip().splitlines()) == 1




def test_export_under_a_regular_file_is_exit_code_2(tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("I am a file")
    out = blocker / "model.onnx"
    rc, _, stderr = _export(capsys, "--model", "resnet18:dims=8", "--out", str(out))
    assert blocker.read_text() == "I am a file"
    assert _leftovers(tmp_path) == []
    assert rc == 2
    assert str(blocker) in stderr or "not_a_folder" in stderr


def test_export_under_a_regular_file_leaves_no_partial_file(tmp_path, capsys):
    """Whatever the exit path, nothing is written next to (or instead of) the blocking file."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("I am a file")
    try:
        _export(capsys, "--model", "resnet18:dims=8", "--out", str(blocker / "model.onnx"))
    except OSError:
        pass  # see test_export_under_a_regular_file_is_exit_code_2
    assert blocker.read_text() == "I am a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_export_onto_an_existing_folder_is_exit_code_2(tmp_path, capsys):
    target = tmp_path / "already_a_folder"
    target.mkdir()
    try:
        rc, _, _ = _export(capsys, "--model", "resnet18:dims=8", "--out", str(target))
    finally:
        assert target.is_dir() and list(target.iterdir()) == []
        assert _leftovers(tmp_path) == []  # the temporary export was removed
    assert rc == 2


@pytest.mark.slow  # 6 exports: ~15 s on 2 idle cores, minutes on a busy machine
@pytest.mark.parametrize("name", [s for s in STUDENTS if s != "resnet18"])
def test_every_student_exports_to_onnx(tmp_path, name):
    """Each student's ONNX export runs in ONNX Runtime and matches torch (the export verifies
    it; checked again here at the policy's size)."""
    descriptor = load_descriptor(f"{name}:dims=32", resize="short:128")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worst = export_descriptor(descriptor, "onnx", tmp_path / f"{name}.onnx")
    assert worst >= 0.999
    exported = load_descriptor(f"onnx:{tmp_path / f'{name}.onnx'}")
    size = 128
    height, width = (size, size) if exported.resize.mode == "square" else (size, 160)
    pixels = _pixels(2, height, width, seed=3)
    reference = load_descriptor(f"{name}:dims=32").embed_batch(pixels)
    assert _min_cosine(exported.embed_batch(pixels), reference) >= 0.999
