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
    mixup: bool = False
    batch_size: int = 256  # images per process per step (2 views each)
    workers: int = 4
    # model
    arch: str = "resnet50"
    dims: int = 512
    kd_dim: int | None = None  # compact mode: distilled feature width (§3.1)
    gem_p: float = 3.0
    # contrastive loss
    infonce_temperature: float = 0.05
    infonce_weight: float = 1.0  # 0 with a teacher: distillation alone
    entropy_weight: float = 30.0
    directclr_dim: int = 0  # >0 enables DirectCLR on the first N coordinates (§2.6)
    directclr_weight: float = 1.0
    # distillation (§2.4)
    teacher: str | None = None  # model spec; None trains the SSCD baseline
    kd_weight: float = 0.1
    kd_teacher_temperature: float = 0.05
    kd_student_temperature: float = 0.05
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
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    channels_last: bool = True
    sync_bn: bool = True
    seed: int = 0
    out_dir: str = "runs/train"
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    export: list[str] = field(default_factory=lambda: ["torchscript", "onnx"])

    def validate(self) -> TrainConfig:
        if self.augmentations not in ("SIMCLR", "STRONG_BLUR", "ADVANCED"):
            raise CopydistillError(f"augmentations={self.augmentations!r}; use SIMCLR, STRONG_BLUR or ADVANCED")
        if self.optimizer not in ("lars", "sgd", "adamw"):
            raise CopydistillError(f"optimizer={self.optimizer!r}; use lars, sgd or adamw")
        if self.batch_size < 2:
            raise CopydistillError("batch_size must be >= 2 (InfoNCE needs negatives)")
        return self


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
