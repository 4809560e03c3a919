"""Export a torch-backed Descriptor as ONNX or TorchScript, verified on export.

The exported model takes uint8 RGB pixels (NHWC for ONNX, like ``sscd-int8``; NHWC for
TorchScript too) of any batch, height and width, normalises inside, and returns L2-normalised
descriptors. Resizing stays outside (the caller applies the stored policy). The file carries the
model fingerprint and resize policy as metadata, so ``onnx:FILE`` / ``torchscript:FILE`` load with
the right preprocessing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from copydistill.errors import CopydistillError, ModelSpecError
from copydistill.io.atomic import FILE_MODE
from copydistill.models.descriptor import Descriptor
from copydistill.models.torch_descriptor import TorchDescriptor

META_KEY = "copydistill"
VERIFY_SIZES = ((224, 288), (256, 256))
MIN_COSINE = 0.999


class ExportVerificationError(CopydistillError):
    """The exported file does not reproduce the torch model."""


def _metadata(descriptor: Descriptor) -> dict:
    return {**descriptor.fingerprint(), "input": "uint8_nhwc", "dims": descriptor.dims}


def synthetic_pixels(height: int, width: int, n: int = 3, seed: int = 0, noise: int = 20) -> np.ndarray:
    """Smooth-ish random uint8 RGB images (N, H, W, 3): 8-px colour blocks plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, height // 8 + 1, width // 8 + 1, 3))
    smooth = coarse.repeat(8, axis=1).repeat(8, axis=2)[:, :height, :width]
    return np.clip(smooth + rng.integers(-noise, noise + 1, smooth.shape), 0, 255).astype(np.uint8)


def _verify(reference: TorchDescriptor, exported: Descriptor, path: Path, sizes) -> float:
    worst = 1.0
    for i, (h, w) in enumerate(sizes):
        pixels = synthetic_pixels(h, w, seed=i)
        try:
            theirs = exported.embed_batch(pixels)
        except Exception as err:  # ONNX Runtime / TorchScript runtime errors
            raise ExportVerificationError(f"{path}: the exported model fails at {h}x{w}: {err}") from err
        cosine = np.sum(reference.embed_batch(pixels) * theirs, axis=1)
        worst = min(worst, float(cosine.min()))
    if worst < MIN_COSINE:
        raise ExportVerificationError(
            f"{path}: exported model disagrees with torch (min cosine {worst:.5f} < {MIN_COSINE}); "
            "the architecture may not export with dynamic image sizes"
        )
    return worst


def export_descriptor(descriptor: Descriptor, fmt: str, out: str | Path) -> float:
    """Write ``descriptor`` to ``out`` as ``onnx`` or ``torchscript``; returns the worst cosine.

    Some trunks (timm's MobileViT) bake the image size into the traced graph. When the dynamic
    export fails verification, the model is exported for one square size instead and the file
    records the ``square:S`` resize policy, so it still loads and runs correctly.
    """
    if not isinstance(descriptor, TorchDescriptor):
        raise ModelSpecError(f"{descriptor.name} is not a PyTorch model; only torch models can be exported")
    if fmt not in ("onnx", "torchscript"):
        raise ModelSpecError(f"export format {fmt!r} not supported; use onnx or torchscript")
    out = Path(out)
    if out.is_dir():
        raise CopydistillError(f"{out}: is a folder; give the output file name (e.g. {out / 'model.onnx'})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CopydistillError(f"cannot write {out}: {err.strerror or err}. Choose a writable output path.") from err
    try:
        return _export(descriptor, fmt, out, fixed=None)
    except ExportVerificationError as err:
        size = descriptor.resize.size if descriptor.resize.mode != "none" else 256
        import warnings

        warnings.warn(f"dynamic-size export failed ({err}); exporting at a fixed {size}x{size}", stacklevel=2)
        from copydistill.models.descriptor import ResizePolicy

        descriptor.resize = ResizePolicy("square", size)
        return _export(descriptor, fmt, out, fixed=size)


def _export(descriptor: Descriptor, fmt: str, out: str | Path, fixed: int | None) -> float:
    from copydistill.models.onnx_descriptor import OnnxDescriptor
    from copydistill.models.registry import load_torchscript

    module = descriptor.module.cpu().eval()
    sizes = ((fixed, fixed),) if fixed else VERIFY_SIZES
    example = torch.from_numpy(synthetic_pixels(*sizes[0], n=2))
    axes = {0: "batch"} if fixed else {0: "batch", 1: "height", 2: "width"}
    meta = _metadata(descriptor)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as err:
        raise CopydistillError(f"cannot write {out}: {err.strerror or err}. Choose a writable output path.") from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "onnx":
            import onnx

            torch.onnx.export(
                module, (example,), str(tmp), dynamo=False, input_names=["image"],
                output_names=["embedding"], opset_version=17,
                dynamic_axes={"image": axes, "embedding": {0: "batch"}},
            )
            model = onnx.load(str(tmp))
            onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
            onnx.save(model, str(tmp))
            exported = OnnxDescriptor(tmp, f"onnx:{out}", descriptor.resize)
        elif fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(module, (example,), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"copydistill.json": json.dumps(meta)})
            exported = load_torchscript(tmp, f"torchscript:{out}", descriptor.resize, "cpu")
        else:
            raise ModelSpecError(f"export format {fmt!r} not supported; use onnx or torchscript")
        worst = _verify(descriptor, exported, out, sizes)
        os.chmod(tmp, FILE_MODE)  # mkstemp made it 0600; every other output is umask-default
        os.replace(tmp, out)
        return worst
    finally:
        if tmp.exists():
            tmp.unlink()
