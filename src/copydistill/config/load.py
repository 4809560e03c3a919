"""Loading the configuration (dinov2's layers): the dataclass defaults, then the recipe YAML,
then ``key=value`` overrides, merged by OmegaConf's structured configs (which convert and
type-check each value), then built and checked once. Recipes and overrides may name an option
flat (``kd_weight``) or nested (``distillation.weight``, or a ``distillation:`` section);
``config.yaml`` is written nested; checkpoints store the flat names (``to_flat``).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from copydistill.config.sections import (
    FLAT,
    FLAT_OF,
    SECTIONS,
    DataConfig,
    DistillationConfig,
    InfoNCEConfig,
    MoCoConfig,
    ObjectiveConfig,
    OptimiserConfig,
    StudentConfig,
    TrainConfig,
    TrainerConfig,
)
from copydistill.errors import CopydistillError


def _field_type(path: str):
    section, name = path.rsplit(".", 1)
    return typing.get_type_hints(SECTIONS[section])[name]


def _normalise(path: str, value, spelling: str):
    """The spellings OmegaConf does not read: ``None``/empty for optional fields, and
    ``export=onnx,torchscript``."""
    hint = _field_type(path)
    optional = type(None) in typing.get_args(hint)
    if value is None or (isinstance(value, str) and value.strip() in ("None", "none", "null", "")
                         and optional):
        if optional:
            return None
        raise CopydistillError(f"{spelling} cannot be empty")
    if typing.get_origin(hint) is list and not isinstance(value, (list, tuple)):
        return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else [value]
    return value


_UNKNOWN = object()  # a key under a known section that names no option


def _paths(key: str, value) -> list[tuple[str, object]]:
    """(nested path, value) pairs a recipe or override key stands for; [] when unknown."""
    if key in FLAT:
        return [(FLAT[key], value)]
    if key in SECTIONS and isinstance(value, dict):
        pairs = []
        for sub, subvalue in value.items():
            found = _paths(f"{key}.{sub}", subvalue)
            pairs += found or [(f"{key}.{sub}", _UNKNOWN)]
        return pairs
    if key == "distillation" and value is None:
        return [("distillation", None)]
    if key in FLAT_OF:
        return [(key, value)]
    return []


def _merge(config, items: list[tuple[str, object, str]]):
    """Apply (key, value, source) items in order to an OmegaConf structured config; one-line errors."""
    unknown = []
    for key, value, _ in items:
        if not _paths(key, value) or any(v is _UNKNOWN for _, v in _paths(key, value)):
            unknown.append(key)
    if unknown:
        sources = sorted({source for key, _, source in items if key in unknown})
        raise CopydistillError(f"unknown option(s) {sorted(unknown)} in {' and '.join(sources) or 'overrides'}; "
                               f"known: {', '.join(FLAT)}")
    for key, value, _ in items:
        for path, leaf in _paths(key, value):
            if path != "distillation":  # (``distillation: null`` sets the section itself)
                leaf = _normalise(path, leaf, FLAT_OF.get(path, key))
            try:
                config = OmegaConf.merge(config, _nested_dict(path, leaf))
            except OmegaConfBaseException as err:
                expected = getattr(_field_type(path), "__name__", str(_field_type(path)))
                raise CopydistillError(f"{FLAT_OF.get(path, key)}={leaf!r} is not a valid {expected}") from err
    return config


def _nested_dict(path: str, leaf) -> dict:
    for part in reversed(path.split(".")):
        leaf = {part: leaf}
    return leaf


def build_config(merged) -> TrainConfig:
    """The frozen, checked config from a merged OmegaConf config."""
    plain = OmegaConf.to_container(merged)
    distillation = plain["distillation"]
    objective = plain["objective"]
    return TrainConfig(
        student=StudentConfig(**plain["student"]),
        objective=ObjectiveConfig(kind=objective["kind"], sscd=InfoNCEConfig(**objective["sscd"]),
                                  moco=MoCoConfig(**objective["moco"])),
        distillation=None if not distillation or distillation["teacher"] is None
        else DistillationConfig(**distillation),
        optimiser=OptimiserConfig(**plain["optimiser"]), data=DataConfig(**plain["data"]),
        trainer=TrainerConfig(**plain["trainer"]),
    )


def config_from_dict(data: dict, source: str = "overrides", *, then: dict | None = None) -> TrainConfig:
    """A config from a mapping of flat names and/or sections (a recipe, a stored config.yaml),
    with the options in ``then`` applied after it."""
    items = [(k, v, source) for k, v in data.items()] + [(k, v, "replace") for k, v in (then or {}).items()]
    return build_config(_merge(OmegaConf.structured(TrainConfig), items))


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """defaults → the YAML recipe at ``path`` → ``key=value`` overrides, merged and checked once."""
    items: list[tuple[str, object, str]] = []
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CopydistillError(f"{path}: cannot read the recipe ({err})") from err
        if not isinstance(data, dict):
            raise CopydistillError(f"{path}: a recipe is a mapping of option: value")
        items += [(str(k), v, str(path)) for k, v in data.items()]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise CopydistillError(f"override {item!r} must look like key=value")
        items.append((key.strip(), yaml.safe_load(value) if value.strip() else None, "overrides"))
    return build_config(_merge(OmegaConf.structured(TrainConfig), items))


def to_nested(config: TrainConfig) -> dict:
    """The config as nested plain values (what ``config.yaml`` holds)."""
    return dataclasses.asdict(config)


def to_flat(config: TrainConfig) -> dict:
    """Every option by its flat name (checkpoints' ``hyper_parameters.config``, run comparisons);
    without a teacher the distillation options read as their defaults and ``teacher`` as None."""
    nested = to_nested(config)
    if nested["distillation"] is None:
        nested["distillation"] = {f.name: f.default for f in dataclasses.fields(DistillationConfig)}
    flat = {}
    for path, name in FLAT_OF.items():
        value = nested
        for part in path.split("."):
            value = value[part]
        flat[name] = value
    return flat


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(to_nested(config), sort_keys=False)
