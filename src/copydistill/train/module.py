"""The base LightningModule: a student trained by an injected contrastive objective.

``DescriptorModule`` owns the student (trunk → GeM → Linear → L2, method.md §1.1; compact mode
§3.1), its input pipeline, the optimiser and schedule (§1.5), SyncBN and logging, and calls its
``objective`` (``train/objectives.py``: SSCD InfoNCE + KoLeo, or MoCo) once a step. It alone
trains the SSCD baseline; ``train/distillation.py`` adds a teacher on top (``super().training_step``
plus the distillation loss, as solo-learn's methods do).
"""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
from torch import nn

from copydistill.config import TrainConfig, to_flat
from copydistill.errors import CopydistillError
from copydistill.models.backbones import EmbeddingModel
from copydistill.train.objectives import (
    ContrastiveObjective,
    MoCoObjective,
    ObjectiveOutput,
    SSCDObjective,
    StudentInput,
)
from copydistill.train.optim import build_optimizer, warmup_cosine

# checkpoint keys before the objective became a submodule -> now (old checkpoints still resume)
RENAMED_STATE = {"moco.": "objective.moco.", "key_encoder.": "objective.key_encoder."}


def build_objective(config: TrainConfig, student: EmbeddingModel) -> ContrastiveObjective:
    """The objective ``objective.kind`` names (one table, ``OBJECTIVES``, which the config checks)."""
    return OBJECTIVES[config.objective.kind](config, student)


def _sscd(config: TrainConfig, student: EmbeddingModel) -> SSCDObjective:
    return SSCDObjective(**dataclasses.asdict(config.objective.sscd), seed=config.trainer.seed)


def _moco(config: TrainConfig, student: EmbeddingModel) -> MoCoObjective:
    return MoCoObjective(student, **dataclasses.asdict(config.objective.moco), seed=config.trainer.seed)


OBJECTIVES = {"sscd": _sscd, "moco": _moco}


def initialise_student(student: EmbeddingModel, config) -> None:
    """Copy the weights of ``init_student`` (a student this project trained, never a third-party
    file) into ``student``; the architecture must match the recipe's."""
    from pathlib import Path

    from copydistill.errors import ModelSpecError
    from copydistill.models.registry import read_student

    path = Path(config.init).expanduser()
    if not path.is_file():
        raise CopydistillError(f"init_student={config.init}: no such file; give a student.pt or .ckpt "
                               "that copydistill train wrote")
    try:
        found = read_student(path)
    except ModelSpecError as err:
        raise CopydistillError(str(err)) from err
    wanted = (config.arch, config.dims, config.kd_dim, config.head_norm)
    if (found.arch, found.dims, found.kd_dim, found.head_norm) != wanted:
        raise CopydistillError(
            f"{path}: a {found.arch} ({found.dims}-d, kd_dim {found.kd_dim}, head_norm {found.head_norm}) "
            f"student, but the recipe trains {config.arch} ({config.dims}-d, kd_dim {config.kd_dim}, "
            f"head_norm {config.head_norm}); use a matching file or recipe")
    from copydistill.models.teachers import load_checked

    load_checked(student, found.state, path, f"the student {found.arch} ({found.dims}-d)")


class DescriptorModule(L.LightningModule):
    """Student + contrastive objective. ``training_step`` returns ``{"loss", "output"}``: the
    weighted loss and the objective's ``ObjectiveOutput`` (the rows the student embedded)."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        # flat option names in checkpoints, as since the first one (models/registry.py reads them)
        self.save_hyperparameters({"config": to_flat(config)})
        s = config.student
        self.student = EmbeddingModel(s.arch, dims=s.dims, kd_dim=s.kd_dim, gem_p=s.gem_p, head_norm=s.head_norm)
        if s.init:
            initialise_student(self.student, s)
        self.inputs = StudentInput(s.input_size, channels_last=s.channels_last)
        self.objective = build_objective(config, self.student)
        self.device_views = None  # augment_device: gpu -> views made from sources on the device
        if config.data.augment_device == "gpu":
            from copydistill.augment.gpu import GPUAugment
            from copydistill.train.gpu_views import DeviceViews

            d = config.data
            self.device_views = DeviceViews(GPUAugment(d.augmentations, d.image_size, d.crop_scale_min),
                                            config.trainer.seed)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """``augment_device: gpu``: the batch's views, made on the training device."""
        if self.device_views is not None and "sources" in batch:
            batch = self.device_views(batch, self.device, epoch=self.current_epoch, step=self.global_step,
                                      rank=self.global_rank)
        return batch

    @property
    def student_sees_both_views(self) -> bool:
        """Whether the student must embed view1 even when the objective does not need it."""
        return False

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        output: ObjectiveOutput = self.objective(
            batch["views"], batch["index"], self.student, self.inputs, step=self.global_step,
            both_views=self.student_sees_both_views)
        self.log_terms(output.stats, batch["views"].shape[0])
        return {"loss": output.loss, "output": output}

    def log_terms(self, stats: dict[str, torch.Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=batch_size)

    def on_train_batch_end(self, outputs: dict, batch: dict, batch_idx: int) -> None:
        """The step's total, once, whatever a subclass added to the objective's loss."""
        self.log("train/loss", outputs["loss"], prog_bar=True, batch_size=batch["views"].shape[0])

    # ---- optimisation (§1.5) -------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the student (never a teacher or the EMA key encoder)."""
        return list(self.student.parameters())

    def learning_rate(self) -> float:
        """``absolute_lr``, else ``base_lr`` × global batch / 256."""
        optimiser = self.config.optimiser
        if optimiser.absolute_lr is not None:
            return optimiser.absolute_lr
        global_batch = self.config.data.batch_size * max(1, self.trainer.world_size if self._trainer else 1)
        return optimiser.base_lr * global_batch / 256

    def epochs_to_steps(self, epochs: float) -> int:
        """Optimiser steps in ``epochs`` (fractional) epochs of the attached trainer."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        batches = self.trainer.num_training_batches
        known = batches not in (None, float("inf")) and batches > 0
        steps_per_epoch = int(batches) if known else max(1, total // max(1, self.config.trainer.epochs))
        return int(round(epochs * steps_per_epoch))

    def configure_optimizers(self) -> dict:
        c = self.config.optimiser
        optimizer = build_optimizer(c.name, self.trainable_parameters(), lr=self.learning_rate(),
                                    momentum=c.momentum, weight_decay=c.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, self.epochs_to_steps(c.warmup_epochs))  # real epochs, even with max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        """SyncBN for the student and the objective's encoders when several processes train on
        GPUs (PyTorch's SyncBN has no CPU kernel: CPU processes keep per-rank statistics)."""
        if self.config.trainer.sync_bn and self._trainer is not None and self.trainer.world_size > 1:
            if self.trainer.strategy.root_device.type != "cuda":
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn("sync_bn: SyncBatchNorm needs GPUs; CPU processes keep their own BN statistics")
                return
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.objective.convert_sync_batchnorm()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(tuple(RENAMED_STATE))]:
            old = next(p for p in RENAMED_STATE if key.startswith(p))
            state[RENAMED_STATE[old] + key.removeprefix(old)] = state.pop(key)
