"""Typed training configuration, loaded from YAML and overridden with ``key=value`` arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from copydistill.errors import CopydistillError


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults reproduce SSCD's DISC recipe (method.md §1.5)."""

    # data
    train_images: str = ""  # folder of training images (recursive)
    val_data: str | None = None  # DISC-layout folder for validation µAP (None: no validation)
    val_resize: str = "square:288"  # §1.5: validation at a 288x288 square resize
    image_size: int = 224
    augmentations: str = "ADVANCED"  # SIMCLR | STRONG_BLUR | ADVANCED
    crop_scale_min: float = 0.08  # smallest crop area fraction (§1.3: 0.08)
    student_size: int | None = None  # the student sees views resized to this (None: image_size);
    # views are made, cached and shown to the teacher at image_size
    mixup: bool = False
    batch_size: int = 256  # images per process per step (2 views each)
    workers: int = 4
    # model
    arch: str = "resnet50"
    dims: int = 512
    kd_dim: int | None = None  # compact mode: distilled feature width (§3.1)
    gem_p: float = 3.0
    head_norm: str = "none"  # none: SSCD's head (§1.1) | batchnorm: BatchNorm1d before L2 (docs/training.md)
    # contrastive loss
    contrastive: str = "sscd"  # sscd: in-batch InfoNCE (§1.2) | moco: MoCo queue + hard negatives (§3.3)
    infonce_temperature: float = 0.05  # sscd only (so are infonce_weight, entropy_weight, directclr_*)
    infonce_weight: float = 1.0  # 0 with a teacher: distillation alone
    entropy_weight: float = 30.0
    directclr_dim: int = 0  # >0 enables DirectCLR on the first N coordinates (§2.6)
    directclr_weight: float = 1.0
    moco_weight: float = 1.0  # λ_moco, scales L_moco + λ_hn·L_hn (§3.5)
    moco_temperature: float = 0.07
    moco_momentum: float = 0.99  # key encoder EMA m
    moco_queue_size: int = 65_536
    hn_weight: float = 5.0  # λ_hn; 0 = plain MoCo
    # distillation (§2.4; RDCD's relational KL, §3.4)
    teacher: str | None = None  # model spec; None trains without distillation
    kd_weight: float = 0.1
    kd_teacher_temperature: float = 0.05
    kd_student_temperature: float = 0.05
    kd_objective: str = "cross_entropy"  # cross_entropy (thesis, §2.4) | kl (RDCD, §3.4)
    kd_prepend_current: bool = True  # bank = [current keys ; queue] (§2.4) or the queue alone (§3.4)
    kd_views: str = "both"  # views the teacher sees: both (§2.4) | query (view0 only, RDCD §3.2)
    kd_regression_weight: float = 0.0  # >0: + w·(2 − 2cos(student, own teacher key)) (KeyRegression)
    kd_relation_weight: float = 0.0  # >0: + w·KL of the batch's view similarities (BatchRelationDistillation)
    kd_predictor: str = "none"  # none: the feature itself is distilled (§2.4) | linear | mlp head
    kd_target: str = "view"  # view: the teacher embeds each view (§2.4) | clean: it embeds each
    # unedited image once, and both views are distilled towards that key (docs/training.md)
    bank_size: int = 65_536
    cached_views: int = 0  # >0: precompute this many views per image (and their teacher keys)
    cache_dir: str | None = None
    # optimisation (§1.5)
    optimizer: str = "lars"  # lars | sgd | adamw
    base_lr: float = 0.3  # lr = base_lr * global_batch / 256 unless absolute_lr is set
    absolute_lr: float | None = None
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 5.0
    epochs: int = 100
    max_steps: int = -1
    # trainer
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"  # auto: bf16-mixed on GPU and on CPUs with AVX-512 BF16/AMX, else 32-true
    channels_last: bool = True
    sync_bn: bool = True
    seed: int = 0
    out_dir: str = "runs/train"
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int = 0  # >0: also checkpoint mid-epoch (last.ckpt), for exact resume after a kill
    log_every_n_steps: int = 10
    export: list[str] = field(default_factory=lambda: ["torchscript", "onnx"])

    def validate(self) -> TrainConfig:
        if self.augmentations not in ("SIMCLR", "STRONG_BLUR", "ADVANCED"):
            raise CopydistillError(f"augmentations={self.augmentations!r}; use SIMCLR, STRONG_BLUR or ADVANCED")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise CopydistillError(f"crop_scale_min={self.crop_scale_min} must be in (0, 1]")
        if self.student_size is not None and self.student_size < 16:
            raise CopydistillError(f"student_size={self.student_size} must be >= 16 (or null)")
        if self.optimizer not in ("lars", "sgd", "adamw"):
            raise CopydistillError(f"optimizer={self.optimizer!r}; use lars, sgd or adamw")
        if self.kd_regression_weight < 0:
            raise CopydistillError(f"kd_regression_weight={self.kd_regression_weight} must be >= 0")
        if self.batch_size < 2:
            raise CopydistillError("batch_size must be >= 2 (InfoNCE needs negatives)")
        choices = {"contrastive": ("sscd", "moco"), "kd_objective": ("cross_entropy", "kl"),
                   "kd_views": ("both", "query"), "kd_target": ("view", "clean"),
                   "kd_predictor": ("none", "linear", "mlp"),
                   "head_norm": ("none", "batchnorm")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise CopydistillError(f"{name}={getattr(self, name)!r}; use {' or '.join(allowed)}")
        if self.contrastive == "moco":
            self._validate_moco()
        _check_ranges(self)
        _check_choices(self)
        return self

    def _validate_moco(self) -> None:
        """MoCo settings (§3.3, §3.5); the sscd-only options must be off."""
        if not 0.0 <= self.moco_momentum < 1.0:
            raise CopydistillError(f"moco_momentum={self.moco_momentum} must be in [0, 1)")
        if self.moco_temperature <= 0:
            raise CopydistillError(f"moco_temperature={self.moco_temperature} must be > 0")
        if self.moco_queue_size < 1:
            raise CopydistillError(f"moco_queue_size={self.moco_queue_size} must be >= 1")
        if self.hn_weight < 0:
            raise CopydistillError(f"hn_weight={self.hn_weight} must be >= 0")
        if self.mixup:
            raise CopydistillError("contrastive=moco has no mixup (RDCD trains without it, §3.5): set mixup=false")
        if self.directclr_dim:
            raise CopydistillError("DirectCLR is an InfoNCE variant of contrastive=sscd: set directclr_dim=0 with moco")
        if self.teacher is not None and self.kd_dim is None:
            raise CopydistillError(
                "contrastive=moco with a teacher distils a compact student (§3.1): set kd_dim to the "
                "teacher's width (512 for SSCD ResNet-50) and dims to the descriptor size (64/128/256)"
            )


# (low, high, low inclusive): every number a run uses, checked before any model is built
_RANGES = {
    "image_size": (16, 8192, True), "workers": (0, None, True), "dims": (1, None, True),
    "kd_dim": (1, None, True), "gem_p": (0, None, False), "infonce_temperature": (0, None, False),
    "infonce_weight": (0, None, True), "entropy_weight": (0, None, True), "directclr_dim": (0, None, True),
    "directclr_weight": (0, None, True), "moco_weight": (0, None, True), "kd_weight": (0, None, True), "kd_relation_weight": (0, None, True),
    "kd_teacher_temperature": (0, None, False), "kd_student_temperature": (0, None, False),
    "bank_size": (1, None, True), "cached_views": (0, None, True), "base_lr": (0, None, False),
    "absolute_lr": (0, None, False), "weight_decay": (0, None, True), "momentum": (0, 1, True),
    "warmup_epochs": (0, None, True), "epochs": (1, None, True), "num_nodes": (1, None, True),
    "seed": (0, 2**32 - 1, True), "val_every_n_epochs": (1, None, True),
    "checkpoint_every_n_steps": (0, None, True), "log_every_n_steps": (1, None, True),
}
EXPORT_FORMATS = ("onnx", "torchscript")
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "64-true", "64")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _check_ranges(config: TrainConfig) -> None:
    import math

    for name, (low, high, inclusive) in _RANGES.items():
        value = getattr(config, name, None)
        if value is None:
            continue
        below = value < low if inclusive else value <= low
        if not math.isfinite(value) or below or (high is not None and value > high):
            bound = f"{'>=' if inclusive else '>'} {low}" + ("" if high is None else f" and <= {high}")
            raise CopydistillError(f"{name}={value} is out of range: it must be {bound}")
    if config.max_steps != -1 and config.max_steps < 1:
        raise CopydistillError(f"max_steps={config.max_steps}: use -1 (no limit) or a number >= 1")
    if config.directclr_dim > config.dims:
        raise CopydistillError(f"directclr_dim={config.directclr_dim} cannot exceed dims={config.dims}")


def _check_choices(config: TrainConfig) -> None:
    from copydistill.models.backbones import TRUNKS
    from copydistill.models.descriptor import ResizePolicy

    if config.arch not in TRUNKS and not config.arch.startswith("timm/"):
        raise CopydistillError(f"arch={config.arch!r} is not known; use {', '.join(TRUNKS)} or "
                               "timm/<any timm model>")
    if config.arch.startswith("timm/"):
        import timm

        if not timm.is_model(config.arch.removeprefix("timm/")):
            raise CopydistillError(f"arch={config.arch!r}: timm has no such model")

    bad = [f for f in config.export if f not in EXPORT_FORMATS]
    if bad:
        raise CopydistillError(f"export={config.export}: {', '.join(map(repr, bad))} not known; use a list "
                               f"of {' and '.join(EXPORT_FORMATS)} (or [] for none)")
    try:
        ResizePolicy.parse(config.val_resize)
    except CopydistillError as err:
        raise CopydistillError(f"val_resize: {err}") from err
    if config.precision not in PRECISIONS:
        raise CopydistillError(f"precision={config.precision!r}; use {', '.join(PRECISIONS)}")
    if config.accelerator not in ACCELERATORS:
        raise CopydistillError(f"accelerator={config.accelerator!r}; use {', '.join(ACCELERATORS)}")
    devices = str(config.devices)
    if devices != "auto" and not (devices.lstrip("-").isdigit() and (int(devices) >= 1 or devices == "-1")):
        raise CopydistillError(f"devices={config.devices!r}; use auto, -1 (all) or a number >= 1")


def _coerce(name: str, value, annotation: str):
    """Check and convert a value to its field's type (PyYAML reads ``1e-6`` as a string)."""
    optional = "None" in annotation
    if value is None or (optional and isinstance(value, str) and value.strip() in ("None", "none", "null", "")):
        if optional:
            return None
        raise CopydistillError(f"{name} cannot be empty")
    base = annotation.replace("| None", "").strip()
    try:
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if base == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if base == "str":
            return str(value)
        if base.startswith("list"):
            if isinstance(value, str):  # export=onnx,torchscript
                return [item.strip() for item in value.split(",") if item.strip()]
            return list(value) if isinstance(value, (list, tuple)) else [value]
    except (TypeError, ValueError) as err:
        raise CopydistillError(f"{name}={value!r} is not a valid {base}") from err
    return value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe (keys = ``TrainConfig`` fields) and apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CopydistillError(f"{path}: cannot read the recipe ({err})") from err
        if not isinstance(data, dict):
            raise CopydistillError(f"{path}: a recipe is a mapping of option: value")
    known = {f.name: f for f in fields(TrainConfig)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise CopydistillError(f"override {item!r} must look like key=value")
        data[key.strip()] = yaml.safe_load(value) if value.strip() else None
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise CopydistillError(f"unknown option(s) {unknown} in {path or 'overrides'}; known: {', '.join(known)}")
    data = {key: _coerce(key, value, known[key].type) for key, value in data.items()}
    try:
        return TrainConfig(**data).validate()
    except TypeError as err:
        raise CopydistillError(f"bad recipe {path}: {err}") from err


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
