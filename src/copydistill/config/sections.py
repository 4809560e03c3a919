"""The configuration's sections: one frozen, keyword-only dataclass per component, each checked
when built (``__post_init__``, one-line errors naming the option by its flat name), and the
table of flat option names (``FLAT``: ``kd_weight`` -> ``distillation.weight``). Defaults
reproduce SSCD's DISC recipe (method.md §1.5). ``distillation`` is None without a teacher.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field

from copydistill.errors import CopydistillError
from copydistill.models.gem import GEM_P

EXPORT_FORMATS = ("onnx", "torchscript")
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "64-true", "64")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
KD_VIEWS = ("both", "query")  # the teacher sees both views (§2.4) or view0 only (RDCD §3.2)
# the teacher embeds each view, or each unedited image once; random: a seeded random unit key per
# image instead of the teacher's (a control: the clean-key term's shape without the teacher)
KD_TARGETS = ("view", "clean", "random")


def _alias(section: object, name: str) -> str:
    return FLAT_OF[f"{section.PATH}.{name}"]


def _check_range(section: object, name: str, low: float, high: float | None = None, *,
                 inclusive: bool = True) -> None:
    """``name`` (None passes) must be >= low (> low if not inclusive) and <= high."""
    value = getattr(section, name)
    if value is None:
        return
    below = value < low if inclusive else value <= low
    if not math.isfinite(value) or below or (high is not None and value > high):
        bound = f"{'>=' if inclusive else '>'} {low}" + ("" if high is None else f" and <= {high}")
        raise CopydistillError(f"{_alias(section, name)}={value} is out of range: it must be {bound}")


def _check_choice(section: object, name: str, allowed) -> None:
    value = getattr(section, name)
    if value not in allowed:
        raise CopydistillError(f"{_alias(section, name)}={value!r}; use {' or '.join(allowed)}")


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """trunk → GeM(p) → Linear → L2 (§1.1); compact mode (``kd_dim``) adds a projector (§3.1)."""

    PATH: typing.ClassVar[str] = "student"
    arch: str = "resnet50"  # a registered trunk or timm/<any timm model>
    dims: int = 512  # descriptor width
    kd_dim: int | None = None  # compact mode: the distilled feature's width (§3.1)
    gem_p: float = GEM_P
    head_norm: str = "none"  # none: SSCD's head (§1.1) | batchnorm: BatchNorm1d before L2
    input_size: int | None = None  # the student sees views resized to this (None: data.image_size)
    channels_last: bool = True  # on GPU only: on CPUs 0.92-0.98x in fp32, x1.00-1.15 in bf16
    init: str | None = None  # start from a student this project trained (student.pt or .ckpt)
    # after training: PCA whitening fitted on train images, baked into student.pt and its exports
    # (train/whitening.py); 0 = off, else the whitened width (<= dims)
    whiten_dims: int = 0
    whiten_shrinkage: float = 0.03  # x the mean eigenvalue, added to every eigenvalue
    # a distilled student's (a teacher set; None: whiten_shrinkage): it keeps the teacher's signal
    # in directions the shrinkage damps (docs/quickstart.md, ninth round)
    whiten_shrinkage_distilled: float | None = None
    # pca: PCA whitening | learned: whitened by the difference covariance of each train image and
    # whiten_views augmented views of it (Radenović et al.'s learned whitening; train/whitening.py)
    whiten_method: str = "pca"
    whiten_views: int = 2
    whiten_images: str | None = None  # the images to fit it on (None: data.train_images)
    whiten_max_images: int = 20000  # a seeded sample of at most this many

    def __post_init__(self) -> None:
        from copydistill.models.backbones import HEAD_NORMS, TRUNKS

        if self.arch not in TRUNKS and not self.arch.startswith("timm/"):
            raise CopydistillError(f"arch={self.arch!r} is not known; use {', '.join(TRUNKS)} or "
                                   "timm/<any timm model>")
        if self.arch.startswith("timm/"):
            import timm

            if not timm.is_model(self.arch.removeprefix("timm/")):
                raise CopydistillError(f"arch={self.arch!r}: timm has no such model")
        _check_range(self, "dims", 1)
        _check_range(self, "kd_dim", 1)
        _check_range(self, "gem_p", 0, inclusive=False)
        _check_choice(self, "head_norm", HEAD_NORMS)
        _check_range(self, "whiten_dims", 0, self.dims)
        _check_range(self, "whiten_shrinkage", 0, inclusive=False)
        _check_range(self, "whiten_shrinkage_distilled", 0, inclusive=False)
        _check_range(self, "whiten_max_images", 2)
        _check_range(self, "whiten_views", 1)
        from copydistill.train.whitening import METHODS

        _check_choice(self, "whiten_method", METHODS)
        if self.input_size is not None and self.input_size < 16:
            raise CopydistillError(f"student_size={self.input_size} must be >= 16 (or null)")


@dataclass(frozen=True, kw_only=True)
class InfoNCEConfig:
    """``objective.kind: sscd``: weight · (InfoNCE + λ·KoLeo) (§1.2) [+ DirectCLR (§2.6)], mixup (§1.4)."""

    PATH: typing.ClassVar[str] = "objective.sscd"
    temperature: float = 0.05
    weight: float = 1.0  # 0 with a teacher: distillation alone
    entropy_weight: float = 30.0  # KoLeo λ (30 for ResNet-50, 10 elsewhere, 0 = off)
    directclr_dim: int = 0  # >0: DirectCLR on the first N coordinates (§2.6)
    directclr_weight: float = 1.0
    mixup: bool = False

    def __post_init__(self) -> None:
        _check_range(self, "temperature", 0, inclusive=False)
        for name in ("weight", "entropy_weight", "directclr_dim", "directclr_weight"):
            _check_range(self, name, 0)


@dataclass(frozen=True, kw_only=True)
class MoCoConfig:
    """``objective.kind: moco``: weight · (L_moco + hn_weight · L_hn) (§3.3, §3.5)."""

    PATH: typing.ClassVar[str] = "objective.moco"
    weight: float = 1.0
    temperature: float = 0.07
    momentum: float = 0.99  # key encoder EMA m
    queue_size: int = 65_536
    hn_weight: float = 5.0  # 0 = plain MoCo

    def __post_init__(self) -> None:
        _check_range(self, "weight", 0)


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """The contrastive objective (``kind``, checked against ``train.module.OBJECTIVES``) and its settings."""

    PATH: typing.ClassVar[str] = "objective"
    kind: str = "sscd"  # sscd: in-batch InfoNCE (§1.2) | moco: MoCo queue + hard negatives (§3.3)
    sscd: InfoNCEConfig = field(default_factory=InfoNCEConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)

    def __post_init__(self) -> None:
        from copydistill.train.module import OBJECTIVES

        _check_choice(self, "kind", OBJECTIVES)
        if self.kind == "moco":
            self._check_moco()

    def _check_moco(self) -> None:
        """MoCo's settings; the sscd-only options that change the step must be off."""
        m = self.moco
        if not 0.0 <= m.momentum < 1.0:
            raise CopydistillError(f"moco_momentum={m.momentum} must be in [0, 1)")
        if m.temperature <= 0:
            raise CopydistillError(f"moco_temperature={m.temperature} must be > 0")
        if m.queue_size < 1:
            raise CopydistillError(f"moco_queue_size={m.queue_size} must be >= 1")
        if m.hn_weight < 0:
            raise CopydistillError(f"hn_weight={m.hn_weight} must be >= 0")
        if self.sscd.mixup:
            raise CopydistillError("contrastive=moco has no mixup (RDCD trains without it, §3.5): set mixup=false")
        if self.sscd.directclr_dim:
            raise CopydistillError("DirectCLR is an InfoNCE variant of contrastive=sscd: set directclr_dim=0 with moco")


@dataclass(frozen=True, kw_only=True)
class DistillationConfig:
    """Memory-bank similarity distillation (§2.4; RDCD's relational KL, §3.4) from ``teacher``."""

    PATH: typing.ClassVar[str] = "distillation"
    teacher: str | None = None  # a model spec; a built config with no teacher has distillation None
    weight: float = 0.1
    teacher_temperature: float = 0.05
    student_temperature: float = 0.05
    objective: str = "cross_entropy"  # cross_entropy (thesis, §2.4) | kl (RDCD, §3.4)
    prepend_current: bool = True  # bank = [current keys ; queue] (§2.4) or the queue alone (§3.4)
    views: str = "both"  # views the teacher sees: both (§2.4) | query (view0 only, RDCD §3.2)
    regression_weight: float = 0.0  # >0: + w·(2 − 2cos(student, own teacher key)) (KeyRegression)
    relation_weight: float = 0.0  # >0: + w·KL of the batch's view similarities (BatchRelationDistillation)
    nontarget_weight: float = 0.0  # >0: + w·KL of the bank distributions without each row's own key
    predictor: str = "none"  # none: the feature itself (§2.4) | linear | mlp | batchnorm (centred)
    target: str = "view"  # view: the teacher embeds each view | clean: each unedited image once |
    #                       random: a fixed random unit key per image (a control, no teacher knowledge)
    start_epoch: float = 0.0  # >0: KD terms weigh 0 before this epoch (the bank fills meanwhile)
    end_epoch: float = 0.0  # >0: KD terms weigh 0 from this epoch on (an early distillation phase)
    copy_threshold: float = 0.0  # >0: train images the teacher sees as copies (cosine above) are
    #                              InfoNCE positives and share batches (train/copies.py)
    bank_size: int = 65_536

    def __post_init__(self) -> None:
        from copydistill.losses.distill import OBJECTIVES
        from copydistill.train.distillation import PREDICTORS

        if not self.teacher:
            raise CopydistillError("teacher is empty: pass a model spec, or teacher=null for no distillation")
        for name in ("weight", "regression_weight", "relation_weight", "nontarget_weight", "start_epoch",
                     "end_epoch"):
            _check_range(self, name, 0)
        if self.end_epoch and self.end_epoch <= self.start_epoch:
            raise CopydistillError(f"kd_end_epoch {self.end_epoch} must come after kd_start_epoch "
                                   f"{self.start_epoch} (or be 0: distil to the end)")
        for name in ("teacher_temperature", "student_temperature"):
            _check_range(self, name, 0, inclusive=False)
        _check_range(self, "copy_threshold", 0, 1)  # 0: off
        _check_range(self, "bank_size", 1)
        for name, allowed in (("objective", OBJECTIVES), ("views", KD_VIEWS), ("target", KD_TARGETS),
                              ("predictor", PREDICTORS)):
            _check_choice(self, name, allowed)


@dataclass(frozen=True, kw_only=True)
class OptimiserConfig:
    """LARS / SGD / AdamW (``name``, checked against ``train.optim.OPTIMIZERS``), warmup + cosine (§1.5)."""

    PATH: typing.ClassVar[str] = "optimiser"
    name: str = "lars"
    base_lr: float = 0.3  # lr = base_lr * global batch / 256 unless absolute_lr is set
    absolute_lr: float | None = None
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 5.0

    def __post_init__(self) -> None:
        from copydistill.train.optim import OPTIMIZERS

        _check_choice(self, "name", OPTIMIZERS)
        for name in ("base_lr", "absolute_lr"):
            _check_range(self, name, 0, inclusive=False)
        _check_range(self, "weight_decay", 0)
        _check_range(self, "momentum", 0, 1)
        _check_range(self, "warmup_epochs", 0)


AUGMENT_DEVICES = ("cpu", "gpu")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Training views (§1.2, §1.3), their loader and cache, and the validation set."""

    PATH: typing.ClassVar[str] = "data"
    train_images: str = ""  # folder of training images (recursive)
    val_data: str | None = None  # DISC-layout folder for validation µAP (None: no validation)
    val_resize: str = "square:288"  # §1.5: validation at a 288x288 square resize
    image_size: int = 224  # views are made, cached and shown to the teacher at this size
    augmentations: str = "ADVANCED"
    crop_scale_min: float = 0.08  # smallest crop area fraction (§1.3: 0.08)
    batch_size: int = 256  # images per process per step (2 views each)
    workers: int = 4
    cached_views: int = 0  # >0: precompute this many views per image (and their teacher keys)
    cache_dir: str | None = None
    view_seed: int | None = None  # seed of the augmentations (None: the trainer's seed); fix it to
    # vary init and batch order while the views stay the same (docs/training.md)
    augment_device: str = "cpu"  # gpu: views made batched on the training device (augment/gpu.py)

    def __post_init__(self) -> None:
        from copydistill.augment.sscd import SETTINGS
        from copydistill.models.descriptor import ResizePolicy

        if self.augmentations not in SETTINGS:
            raise CopydistillError(f"augmentations={self.augmentations!r}; use {', '.join(SETTINGS)}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise CopydistillError(f"crop_scale_min={self.crop_scale_min} must be in (0, 1]")
        if self.batch_size < 2:
            raise CopydistillError("batch_size must be >= 2 (InfoNCE needs negatives)")
        _check_range(self, "image_size", 16, 8192)
        _check_range(self, "workers", 0)
        _check_range(self, "cached_views", 0)
        _check_range(self, "view_seed", 0, 2**32 - 1)
        if self.augment_device not in AUGMENT_DEVICES:
            raise CopydistillError(f"augment_device={self.augment_device!r}; use {' or '.join(AUGMENT_DEVICES)}")
        if self.augment_device == "gpu" and self.cached_views:
            raise CopydistillError("augment_device=gpu makes fresh views every step; it cannot use "
                                   "cached_views (set cached_views=0, or augment_device=cpu)")
        try:
            ResizePolicy.parse(self.val_resize)
        except CopydistillError as err:
            raise CopydistillError(f"val_resize: {err}") from err


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Length, hardware, outputs and logging of the Lightning run."""

    PATH: typing.ClassVar[str] = "trainer"
    epochs: int = 100
    max_steps: int = -1
    accelerator: str = "auto"
    devices: str = "auto"  # auto, -1 (all) or a count
    num_nodes: int = 1
    precision: str = "auto"  # auto: bf16-mixed on GPU and on CPUs with AVX-512 BF16/AMX, else 32-true
    sync_bn: bool = True
    seed: int = 0
    out_dir: str = "runs/train"
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int = 0  # >0: also checkpoint mid-epoch (last.ckpt), for exact resume
    log_every_n_steps: int = 10
    export: list[str] = field(default_factory=lambda: ["torchscript", "onnx"])

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("num_nodes", 1), ("val_every_n_epochs", 1),
                          ("checkpoint_every_n_steps", 0), ("log_every_n_steps", 1)):
            _check_range(self, name, low)
        _check_range(self, "seed", 0, 2**32 - 1)
        if self.max_steps != -1 and self.max_steps < 1:
            raise CopydistillError(f"max_steps={self.max_steps}: use -1 (no limit) or a number >= 1")
        bad = [f for f in self.export if f not in EXPORT_FORMATS]
        if bad:
            raise CopydistillError(f"export={self.export}: {', '.join(map(repr, bad))} not known; use a list "
                                   f"of {' and '.join(EXPORT_FORMATS)} (or [] for none)")
        if self.precision not in PRECISIONS:
            raise CopydistillError(f"precision={self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.accelerator not in ACCELERATORS:
            raise CopydistillError(f"accelerator={self.accelerator!r}; use {', '.join(ACCELERATORS)}")
        devices = str(self.devices)
        if devices != "auto" and not (devices.lstrip("-").isdigit() and (int(devices) >= 1 or devices == "-1")):
            raise CopydistillError(f"devices={self.devices!r}; use auto, -1 (all) or a number >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A whole run; the checks that span sections run here, after each section's own."""

    student: StudentConfig = field(default_factory=StudentConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    distillation: DistillationConfig | None = None
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.objective.sscd.directclr_dim > self.student.dims:
            raise CopydistillError(f"directclr_dim={self.objective.sscd.directclr_dim} cannot exceed "
                                   f"dims={self.student.dims}")
        kd = self.distillation
        if kd is not None and kd.target == "random" and (kd.copy_threshold or self.objective.sscd.mixup):
            raise CopydistillError("kd_target=random is a control without the teacher's keys: it takes neither "
                                   "kd_copy_threshold nor mixup (both need the teacher)")
        if self.objective.kind == "moco" and self.distillation is not None and self.distillation.copy_threshold:
            raise CopydistillError("kd_copy_threshold adds InfoNCE positives: it needs contrastive=sscd")
        if self.objective.kind == "moco" and self.distillation is not None and self.student.kd_dim is None:
            raise CopydistillError(
                "contrastive=moco with a teacher distils a compact student (§3.1): set kd_dim to the "
                "teacher's width (512 for SSCD ResNet-50) and dims to the descriptor size (64/128/256)"
            )

    def replace(self, **flat) -> TrainConfig:
        """A copy with options changed, by flat name (``teacher=None``, ``out_dir=...``), checked."""
        from copydistill.config.load import config_from_dict, to_nested

        return config_from_dict(to_nested(self), "the config", then=flat)


SECTIONS = {c.PATH: c for c in (StudentConfig, ObjectiveConfig, InfoNCEConfig, MoCoConfig, DistillationConfig,
                                OptimiserConfig, DataConfig, TrainerConfig)}
# flat public name -> nested path; a name absent here is the same in both (``dims`` -> ``student.dims``)
RENAMED = {
    "student_size": "student.input_size", "contrastive": "objective.kind",
    "infonce_temperature": "objective.sscd.temperature", "infonce_weight": "objective.sscd.weight",
    "moco_weight": "objective.moco.weight", "moco_temperature": "objective.moco.temperature",
    "moco_momentum": "objective.moco.momentum", "moco_queue_size": "objective.moco.queue_size",
    "kd_weight": "distillation.weight", "kd_teacher_temperature": "distillation.teacher_temperature",
    "kd_student_temperature": "distillation.student_temperature", "kd_objective": "distillation.objective",
    "kd_prepend_current": "distillation.prepend_current", "kd_views": "distillation.views",
    "kd_regression_weight": "distillation.regression_weight",
    "kd_relation_weight": "distillation.relation_weight",
    "kd_nontarget_weight": "distillation.nontarget_weight", "kd_predictor": "distillation.predictor",
    "kd_target": "distillation.target", "kd_start_epoch": "distillation.start_epoch",
    "kd_end_epoch": "distillation.end_epoch",
    "kd_copy_threshold": "distillation.copy_threshold",
    "optimizer": "optimiser.name", "init_student": "student.init",
}


def _leaf_paths() -> list[str]:
    paths = []
    for path, section in SECTIONS.items():
        paths += [f"{path}.{f.name}" for f in dataclasses.fields(section) if f.name not in ("sscd", "moco")]
    return paths


FLAT_OF = {path: name for name, path in RENAMED.items()}
FLAT_OF |= {path: path.rsplit(".", 1)[1] for path in _leaf_paths() if path not in FLAT_OF}
FLAT = {name: path for path, name in FLAT_OF.items()}  # every option's flat name -> its path
