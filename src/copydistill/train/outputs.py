"""Training output safety: an ``out_dir`` belongs to one run, and a checkpoint is checked (tensors
and plain values only, ``weights_only=True``) before a run resumes from it."""

from __future__ import annotations

from pathlib import Path

import yaml

from copydistill.config import TrainConfig, config_from_dict, to_flat
from copydistill.errors import CopydistillError, ModelSpecError
from copydistill.io.torch_files import torch_load_safely

# options a resumed run may change: length, hardware, logging, outputs (not data, model or loss)
RESUMABLE_CHANGES = frozenset({
    "epochs", "max_steps", "workers", "log_every_n_steps", "val_every_n_epochs",
    "checkpoint_every_n_steps", "export", "val_data", "accelerator", "devices", "num_nodes",
    "precision", "cache_dir", "whiten_dims", "whiten_shrinkage", "whiten_images", "whiten_max_images",
})
# what must agree for a checkpoint's weights to fit the model the config builds
MODEL_KEYS = ("arch", "dims", "kd_dim", "contrastive", "teacher")


def _plain(config: TrainConfig) -> dict:
    """Every option by its flat name, in YAML types (as checkpoints store the config)."""
    return yaml.safe_load(yaml.safe_dump(to_flat(config), sort_keys=False))


def _stored_options(stored) -> dict | None:
    """A stored config (a run's ``config.yaml``: nested, or flat from before the nested config;
    or a checkpoint's flat ``hyper_parameters``) by flat name; None if it does not load."""
    if not isinstance(stored, dict):
        return None
    try:
        return _plain(config_from_dict(stored, "the stored config"))
    except CopydistillError:
        return None


def _differences(stored: dict, current: dict) -> list[str]:
    keys = (set(stored) | set(current)) - RESUMABLE_CHANGES
    return sorted(k for k in keys if stored.get(k) != current.get(k))


def load_checkpoint_safely(path: str | Path) -> dict:
    """A training checkpoint read with ``weights_only=True``; every failure is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CopydistillError(f"--resume {path}: checkpoint file not found")
    try:
        data = torch_load_safely(path)
    except ModelSpecError as err:
        raise CopydistillError(f"--resume {err}; resume only from a last.ckpt of copydistill train") from err
    config = data.get("hyper_parameters", {}).get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict) or "state_dict" not in data:
        raise CopydistillError(f"--resume {path}: not a copydistill training checkpoint (no config)")
    return data


def check_resume(path: str | Path, config: TrainConfig) -> str:
    """Refuse a checkpoint whose model differs from ``config``'s; return its path."""
    stored = load_checkpoint_safely(path)["hyper_parameters"]["config"]
    current = _plain(config)
    wrong = [k for k in MODEL_KEYS if stored.get(k) != current.get(k)]
    if wrong:
        raise CopydistillError(
            f"--resume {path}: the checkpoint's model differs from this config ("
            + ", ".join(f"{k}: {stored.get(k)!r} there, {current.get(k)!r} here" for k in wrong)
            + "); use its recipe, or start a fresh out_dir"
        )
    return str(path)


def resume_point(config: TrainConfig, resume: str | None) -> str | None:
    """The checkpoint this run continues from, or None for a new run; refuses a new run into an
    ``out_dir`` that holds another run's checkpoints."""
    if resume is not None:
        return check_resume(resume, config)
    out = Path(config.trainer.out_dir)
    last = out / "checkpoints" / "last.ckpt"
    if not (last.is_file() or (out / "final").is_dir()):
        return None  # nothing trained here yet
    saved = out / "config.yaml"
    try:
        stored = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    except (OSError, yaml.YAMLError):
        stored = None
    if stored is None and last.is_file():
        stored = load_checkpoint_safely(last)["hyper_parameters"]["config"]
    stored = _stored_options(stored)
    changed = _differences(stored, _plain(config)) if stored is not None else ["config.yaml"]
    if changed:
        raise CopydistillError(
            f"{out} holds another training run ({', '.join(changed[:6])} differ from its "
            f"config.yaml). Continue that run with `copydistill train --config {saved} --resume "
            f"{last}`, or pass a fresh out_dir=DIR for this one"
        )
    return check_resume(last, config) if last.is_file() else None
