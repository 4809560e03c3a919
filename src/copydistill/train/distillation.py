"""Memory-bank distillation on top of the base module (method.md §2.4 with the fixes of §2.8;
RDCD's relational KL, §3.4): ``super().training_step(...)`` plus the distillation loss.

The teacher embeds the views exactly as the student saw them (mixed rows included) or, with
``kd_views: query``, view0 only (RDCD §3.2); keys already in the batch (the teacher-view cache,
or ``kd_target: clean``'s key of the unedited image, ``train/data.py``) are used as given except
for rows mixup changed, which the teacher embeds afresh. The student's feature (the ``kd_dim``
feature of a compact student, §3.1; through ``kd_predictor`` when set) is matched to the
teacher's similarity distribution over [this batch's keys ;] a FIFO bank of teacher keys.
"""

from __future__ import annotations

import torch
from torch import nn

from copydistill.config import TrainConfig
from copydistill.losses.distill import (BatchRelationDistillation, KeyRegression, MemoryBank,
                                         SimilarityDistillation)
from copydistill.train.copies import TeacherCopies
from copydistill.train.module import DescriptorModule
from copydistill.train.objectives import ObjectiveOutput
from copydistill.train.teacher import TeacherKeys

PREDICTORS = ("none", "linear", "mlp", "batchnorm")


def kd_predictor(kind: str, width: int, teacher_dims: int) -> nn.Module:
    """``kd_predictor``: student feature -> teacher space, used by the distillation terms only,
    never exported. ``linear``/``mlp`` are trained with the student; ``batchnorm`` learns nothing:
    it standardises each coordinate over the batch, so the KD terms see a fresh student's
    descriptors without the component they all share (docs/quickstart.md, ninth round)."""
    if kind == "linear":
        return nn.Linear(width, teacher_dims)
    if kind == "batchnorm":  # centre and scale each coordinate over the batch, nothing learnt
        if width != teacher_dims:
            raise ValueError(f"kd_predictor batchnorm keeps the width: the feature is {width}-d, "
                             f"the teacher's keys {teacher_dims}-d")
        return nn.BatchNorm1d(width, affine=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True),
                             nn.Linear(1024, teacher_dims))
    raise ValueError(f"kd_predictor {kind!r}; use {', '.join(PREDICTORS)}")


class DistillationModule(DescriptorModule):
    """Adds a frozen teacher (``TeacherKeys``, never registered), the bank and the KD terms:
    L = L_objective + kd_weight · L_KD [+ kd_regression_weight · L_regression]
    [+ kd_relation_weight · L_relation], the KD terms from step ``kd_start_step`` until
    ``kd_end_step`` (None: to the end)."""

    def __init__(self, config: TrainConfig, teacher: TeacherKeys, copies: TeacherCopies | None = None):
        super().__init__(config)
        kd = config.distillation
        self.teacher = teacher  # a plain object: not a submodule, so out of SyncBN, DDP and checkpoints
        self.kd_start_step = 0  # set from kd_start_epoch / kd_end_epoch when training starts
        self.kd_end_step: int | None = None  # (on_train_start)
        if kd.copy_threshold:
            if copies is None:
                raise ValueError("kd_copy_threshold is set: pass the train split's TeacherCopies")
            self.objective.copies = copies  # teacher-mined copies are InfoNCE positives (train/copies.py)
        width = self.student.feature_dim
        self.kd_head = None
        if kd.predictor != "none":  # a head maps the student's feature into the teacher's space
            self.kd_head = kd_predictor(kd.predictor, width, teacher.dims)
        elif teacher.dims != width:
            raise ValueError(
                f"teacher gives {teacher.dims}-d keys but the student's distilled feature is {width}-d; "
                f"set dims (or kd_dim for a compact student) to {teacher.dims}"
            )
        self.distill = SimilarityDistillation(
            MemoryBank(teacher.dims, kd.bank_size, seed=config.trainer.seed),
            kd.teacher_temperature, kd.student_temperature, prepend_current=kd.prepend_current,
            objective=kd.objective, nontarget_weight=kd.nontarget_weight,
        )
        self.key_regression = KeyRegression() if kd.regression_weight else None
        self.relation = (BatchRelationDistillation(kd.teacher_temperature, kd.student_temperature)
                         if kd.relation_weight else None)

    @property
    def student_sees_both_views(self) -> bool:
        return self.config.distillation.views == "both"

    def on_train_start(self) -> None:
        """``kd_start_epoch`` / ``kd_end_epoch`` in optimiser steps, once: outside them the KD terms
        are logged and the bank fills, but they weigh 0 (a KD phase after InfoNCE has spread the
        descriptors; an early KD phase that stops before the student memorises the teacher's keys
        of the train images, docs/quickstart.md, eleventh round)."""
        kd = self.config.distillation
        self.kd_start_step = self.epochs_to_steps(kd.start_epoch) if kd.start_epoch else 0
        self.kd_end_step = None  # at least one KD step, however short an epoch is
        if kd.end_epoch:
            self.kd_end_step = max(self.kd_start_step + 1, self.epochs_to_steps(kd.end_epoch))

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        out = super().training_step(batch, batch_idx)
        output: ObjectiveOutput = out["output"]
        features, keys = self.distillation_pairs(batch, output)
        if self.kd_head is not None:
            features = nn.functional.normalize(self.kd_head(features), dim=1)
        kd, stats = self.distill(features.float(), keys)  # the bank takes the keys outside the KD window too
        kd_config = self.config.distillation
        on = float(self.kd_start_step <= self.global_step < (self.kd_end_step or float("inf")))
        loss = out["loss"] + on * kd_config.weight * kd
        if self.key_regression is not None:
            regression, regression_stats = self.key_regression(features, keys)
            loss = loss + on * kd_config.regression_weight * regression
            stats |= regression_stats
        if self.relation is not None:
            relation, relation_stats = self.relation(features, keys)
            loss = loss + on * kd_config.relation_weight * relation
            stats |= relation_stats
        self.log_terms(stats, batch["views"].shape[0])
        return {"loss": loss, "output": output}

    def distillation_pairs(self, batch: dict, output: ObjectiveOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """(student features, teacher keys) row for row, for the views the teacher sees."""
        b = batch["views"].shape[0]
        views, features, mixed = output.views, output.features, output.mixed
        both = output.both_views and self.config.distillation.views == "both"
        if output.both_views and not both:  # rows are [view0 of all; view1 of all]: keep view0
            views, features, mixed = views[:b], features[:b], None if mixed is None else mixed[:b]
        if "teacher" not in batch:
            return features, self.teacher.keys(views, self.device)
        given = batch["teacher"]
        keys = torch.cat([given[:, 0], given[:, 1]]) if both else given[:, 0]
        if mixed is not None and mixed.any():  # the teacher must see the mixed views
            keys = keys.clone()
            rows = mixed.to(keys.device)
            keys[rows] = self.teacher.keys(views[mixed.to(views.device)], self.device).to(keys.dtype)
        return features, keys.to(features.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        head = [] if self.kd_head is None else list(self.kd_head.parameters())
        return super().trainable_parameters() + head
