"""Contrastive objectives the base module calls each step; each owns its losses and state.

- ``SSCDObjective``: SSCD's in-batch InfoNCE + KoLeo on both views (method.md §1.2), optional
  DirectCLR (§2.6) and contrastive mixup (§1.4).
- ``MoCoObjective``: RDCD's MoCo (§3.3): the student (query encoder) embeds view0, an EMA key
  encoder embeds view1, scored against a FIFO queue of past keys plus the hard-negative term.

Batches hold uint8 views ``(B, 2, 3, S, S)``; rows are laid out [view0 of all; view1 of all]
(§1.2). Shuffle-BN (§3.3) is not implemented: on one device the key encoder's BatchNorm sees the
whole local batch whatever its order, and with several devices SyncBN (which converts the key
encoder too) computes statistics over the global batch, which makes the shuffle moot, as in RDCD.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from copydistill.augment.mixup import ContrastiveMixup
from copydistill.losses.contrastive import DirectCLR, InfoNCEEntropy, match_matrix
from copydistill.losses.distill import MemoryBank
from copydistill.losses.distributed import gather, world
from copydistill.losses.moco import MoCoHardNegative
from copydistill.models.backbones import EmbeddingModel
from copydistill.models.gem import PixelInput
from copydistill.models.momentum import MomentumEncoder
from copydistill.train.copies import TeacherCopies


class StudentInput(nn.Module):
    """uint8 NCHW views -> normalised student inputs, resized to ``size`` when the views (which
    the teacher sees) are made at another size; channels_last on a GPU (on CPUs it measured 0.92x
    in fp32 and level to 1.15x under bf16, depending on the CPU: docs/quickstart.md, 11th round)."""

    def __init__(self, size: int | None = None, *, channels_last: bool = True):
        super().__init__()
        self.pixels = PixelInput()
        self.size, self.channels_last = size, channels_last

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        inputs = self.pixels(views.permute(0, 2, 3, 1))
        if self.size and self.size != inputs.shape[-1]:
            inputs = nn.functional.interpolate(inputs, size=(self.size, self.size), mode="bilinear",
                                               antialias=True, align_corners=False)
        if self.channels_last and inputs.is_cuda:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs


@dataclass
class ObjectiveOutput:
    """One step of an objective: its weighted loss and logged terms, and the rows the student
    embedded — what a distillation term needs to reuse them."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor]
    views: torch.Tensor  # (n, 3, S, S) uint8 views as the student saw them (mixed, if mixup)
    features: torch.Tensor  # (n, feature_dim) L2 student features (the distilled feature, §3.1)
    both_views: bool  # rows are [view0 of all; view1 of all] (n = 2B), else view0 only (n = B)
    mixed: torch.Tensor | None = None  # (n,) bool: rows mixup changed


class ContrastiveObjective(nn.Module, ABC):
    """The interface the base module calls. ``both_views`` asks the student to embed view1 as
    well when the objective itself would not (a teacher that sees both views)."""

    @abstractmethod
    def forward(self, views: torch.Tensor, instance_ids: torch.Tensor, student: EmbeddingModel,
                prepare: StudentInput, *, step: int, both_views: bool) -> ObjectiveOutput:
        """``views`` (B, 2, 3, S, S) uint8, ``instance_ids`` (B,), ``step`` the global step."""

    def convert_sync_batchnorm(self) -> None:
        """Convert the objective's own encoders to SyncBN (several processes)."""


class SSCDObjective(ContrastiveObjective):
    """weight · (InfoNCE + λ·KoLeo) (§1.2) [+ directclr_weight · DirectCLR (§2.6)], on both views,
    optionally mixed up (§1.4): 5 % of rows mixed with their reversed partner, positives from the
    soft-target match matrix, mixing seeded by (seed, step, rank) so a resumed run mixes the same.
    With ``copies`` (set by the distillation module) teacher-mined copies are positives too."""

    def __init__(self, *, temperature: float, weight: float, entropy_weight: float, directclr_dim: int,
                 directclr_weight: float, mixup: bool, seed: int):  # config.InfoNCEConfig's fields
        super().__init__()
        self.infonce = InfoNCEEntropy(temperature, entropy_weight)
        self.directclr = DirectCLR(directclr_dim, temperature) if directclr_dim else None
        self.mixup = ContrastiveMixup() if mixup else None
        self.weight, self.directclr_weight, self.seed = weight, directclr_weight, seed
        self.copies: TeacherCopies | None = None  # teacher-mined copies count as positives (train/copies.py)

    def forward(self, views, instance_ids, student, prepare, *, step, both_views) -> ObjectiveOutput:
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]])
        mixed = None
        ids = torch.cat([instance_ids, instance_ids])
        if self.mixup is not None:
            rank, size = world()
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, step, rank]).generate_state(1)[0]))
            result = self.mixup(x, generator)
            x, mixed = result.images, result.mixed
            match = torch.zeros(2 * b, 2 * b * size, dtype=torch.bool, device=x.device)
            match[:, rank * 2 * b : (rank + 1) * 2 * b] = result.match.to(x.device)
            if self.copies is not None:  # copies among the rows mixup left alone
                plain = ~result.mixed.to(x.device)
                match[:, rank * 2 * b : (rank + 1) * 2 * b] |= (
                    self.copies.related(ids, ids) & plain[:, None] & plain[None, :])
        else:
            match = match_matrix(ids)
            if self.copies is not None:
                match = match | self.copies.related(ids, gather(ids))
        features, descriptors = student.features(prepare(x))
        nce, stats = self.infonce(descriptors, match)
        loss = self.weight * nce
        if self.directclr is not None:
            clr, clr_stats = self.directclr(descriptors, match)
            loss = loss + self.directclr_weight * clr
            stats |= clr_stats
        return ObjectiveOutput(loss, stats, x, features, both_views=True, mixed=mixed)


class MoCoObjective(ContrastiveObjective):
    """weight · (L_moco + λ_hn·L_hn) (§3.3, §3.5): q = student(view0); the EMA key encoder takes
    its step (θ_k ← m θ_k + (1 − m) θ_q, never in the optimiser), then k = key encoder(view1)
    scored against the queue of past keys. The exported student is the query encoder alone."""

    def __init__(self, student: EmbeddingModel, *, weight: float, temperature: float, momentum: float,
                 queue_size: int, hn_weight: float, seed: int):  # config.MoCoConfig's fields
        super().__init__()
        self.key_encoder = MomentumEncoder(student, momentum)
        queue = MemoryBank(student.dims, queue_size, seed=seed + 1)  # not the KD bank's draw
        self.moco = MoCoHardNegative(queue, temperature, hn_weight)
        self.weight = weight

    def forward(self, views, instance_ids, student, prepare, *, step, both_views) -> ObjectiveOutput:
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]]) if both_views else views[:, 0]
        features, descriptors = student.features(prepare(x))
        self.key_encoder.update(student)
        keys = self.key_encoder(prepare(views[:, 1]))
        moco, stats = self.moco(descriptors[:b].float(), keys.float())
        return ObjectiveOutput(self.weight * moco, stats, x, features, both_views=both_views)

    def convert_sync_batchnorm(self) -> None:
        self.key_encoder.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(self.key_encoder.encoder)
