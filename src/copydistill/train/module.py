"""The LightningModule: a contrastive objective plus, when a teacher is given, memory-bank
distillation — one module, each term switched on by the config.

- ``contrastive: sscd``: SSCD's in-batch InfoNCE (method.md §1.2) on both views, optional mixup.
- ``contrastive: moco``: RDCD's MoCo (§3.3): the student (query encoder) embeds view0, an EMA
  key encoder embeds view1, queue of past keys plus the hard-negative term.
- Distillation: the student's feature (the ``kd_dim`` feature of a compact student, §3.1) against
  the teacher's similarity distribution over a bank of teacher keys (§2.4, or §3.4's relational KL).

Batches hold uint8 views ``(B, 2, 3, S, S)``, their image ``index`` and optionally precomputed
``teacher`` keys ``(B, 2, D)``. Views are laid out [view0 of all; view1 of all] (§1.2), mixed up
on the device (§1.4), normalised inside the step, and seen by the teacher exactly as the student
sees them (``kd_views: query``: view0 only, as RDCD §3.2).

Shuffle-BN (§3.3) is not implemented: on one device the key encoder's BatchNorm sees the whole
local batch whatever its order, and with several devices ``sync_bn`` (which also converts the key
encoder) computes statistics over the global batch, which makes the shuffle moot, as in RDCD.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch import nn

from copydistill.augment.mixup import ContrastiveMixup
from copydistill.config import TrainConfig
from copydistill.losses.contrastive import DirectCLR, InfoNCEEntropy, match_matrix
from copydistill.losses.distill import (BatchRelationDistillation, KeyRegression, MemoryBank,
                                         SimilarityDistillation)
from copydistill.losses.distributed import world
from copydistill.losses.moco import MoCoHardNegative
from copydistill.models.backbones import EmbeddingModel
from copydistill.models.descriptor import Descriptor
from copydistill.models.gem import PixelInput
from copydistill.models.momentum import MomentumEncoder


def kd_head(kind: str, width: int, teacher_dims: int) -> nn.Module:
    """The distillation predictor (``kd_predictor``): student feature -> teacher space. Trained
    with the student, used by the distillation terms only, never exported."""
    if kind == "linear":
        return nn.Linear(width, teacher_dims)
    return nn.Sequential(nn.Linear(width, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True),
                         nn.Linear(1024, teacher_dims))


class CopyDetectionModule(L.LightningModule):
    def __init__(self, config: TrainConfig, teacher: Descriptor | nn.Module | None = None,
                 teacher_dims: int | None = None):
        super().__init__()
        self.config = config.validate()
        self.save_hyperparameters({"config": vars(config)})
        self.student = EmbeddingModel(config.arch, dims=config.dims, kd_dim=config.kd_dim, gem_p=config.gem_p,
                                      head_norm=config.head_norm)
        self.pixels = PixelInput()
        self.infonce = self.directclr = self.mixup = self.key_encoder = self.moco = None
        if config.contrastive == "moco":  # exported student = the query encoder alone
            self.key_encoder = MomentumEncoder(self.student, config.moco_momentum)
            queue = MemoryBank(config.dims, config.moco_queue_size, seed=config.seed + 1)  # not the KD bank's draw
            self.moco = MoCoHardNegative(queue, config.moco_temperature, config.hn_weight)
        else:
            self.infonce = InfoNCEEntropy(config.infonce_temperature, config.entropy_weight)
            if config.directclr_dim:
                self.directclr = DirectCLR(config.directclr_dim, config.infonce_temperature)
            if config.mixup:
                self.mixup = ContrastiveMixup()
        # the teacher is deliberately not a registered submodule: it is frozen, excluded from
        # SyncBN conversion and DDP, and kept out of checkpoints (§2.8 bug 2)
        object.__setattr__(self, "teacher", teacher)
        self.distill = self.kd_head = None
        self.key_regression = KeyRegression()
        self.relation = BatchRelationDistillation(config.kd_teacher_temperature, config.kd_student_temperature)
        if config.teacher is not None or teacher is not None:
            dims = teacher_dims or getattr(teacher, "dims", None) or config.kd_dim or config.dims
            if config.kd_predictor != "none":  # a head maps the student's feature into the teacher's space
                self.kd_head = kd_head(config.kd_predictor, self.student.feature_dim, dims)
            elif dims != self.student.feature_dim:
                raise ValueError(
                    f"teacher gives {dims}-d keys but the student's distilled feature is "
                    f"{self.student.feature_dim}-d; set dims (or kd_dim for a compact student) to {dims}"
                )
            self.distill = SimilarityDistillation(
                MemoryBank(dims, config.bank_size, seed=config.seed),
                config.kd_teacher_temperature, config.kd_student_temperature,
                prepend_current=config.kd_prepend_current, objective=config.kd_objective,
            )

    # ---- teacher -------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_keys(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        """Teacher keys for uint8 NCHW views: torch teachers on the student's device (bf16 on
        GPU), Descriptors (ONNX, e.g. sscd-int8) through their own runtime."""
        teacher = self.teacher
        if isinstance(teacher, nn.Module):
            teacher.to(self.device).eval()
            bf16 = self.device.type == "cuda" and self.config.precision != "32-true"
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                keys = teacher(pixels_uint8.permute(0, 2, 3, 1))
            return nn.functional.normalize(keys.float(), dim=1)
        nhwc = pixels_uint8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        return torch.from_numpy(np.asarray(teacher.embed_batch(nhwc))).to(self.device)

    # ---- step ----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        b = batch["views"].shape[0]
        terms = self._moco_terms if self.moco is not None else self._sscd_terms
        loss, stats, (x, feature, keys) = terms(batch)
        if self.distill is not None:
            if self.config.kd_views == "query":  # rows are [view0 of all; view1 of all]
                x, feature, keys = x[:b], feature[:b], None if keys is None else keys[:b]
            if keys is None:
                keys = self.teacher_keys(x)
            keys = keys.to(feature.device)
            if self.kd_head is not None:
                feature = nn.functional.normalize(self.kd_head(feature), dim=1)
            kd, kd_stats = self.distill(feature.float(), keys)
            loss = loss + self.config.kd_weight * kd
            stats |= kd_stats
            if self.config.kd_regression_weight:
                regression, regression_stats = self.key_regression(feature, keys)
                loss = loss + self.config.kd_regression_weight * regression
                stats |= regression_stats
            if self.config.kd_relation_weight:
                relation, relation_stats = self.relation(feature, keys)
                loss = loss + self.config.kd_relation_weight * relation
                stats |= relation_stats
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=b)
        return loss

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised student inputs; resized to ``student_size`` when the views (which the
        teacher sees) are made at another size."""
        inputs = self.pixels(x.permute(0, 2, 3, 1))
        size = self.config.student_size
        if size and size != inputs.shape[-1]:
            inputs = nn.functional.interpolate(inputs, size=(size, size), mode="bilinear",
                                               antialias=True, align_corners=False)
        if self.config.channels_last and inputs.is_cuda:  # on a CPU (fp32) it measured 0.92x
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def _sscd_terms(self, batch: dict):
        """InfoNCE (+ DirectCLR) on both views, mixed up (§1.2, §1.4). Returns the weighted loss,
        stats and the (views, student features, teacher keys or None) the distillation uses."""
        views = batch["views"]
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]])
        ids = torch.cat([batch["index"], batch["index"]])
        keys = torch.cat([batch["teacher"][:, 0], batch["teacher"][:, 1]]) if "teacher" in batch else None
        if self.mixup is not None:
            rank, size = world()  # seeded by (seed, step, rank): a resumed run mixes the same rows
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.config.seed, self.global_step, rank]).generate_state(1)[0]))
            mixed = self.mixup(x, generator)
            x = mixed.images
            match = torch.zeros(2 * b, 2 * b * size, dtype=torch.bool, device=x.device)
            match[:, rank * 2 * b : (rank + 1) * 2 * b] = mixed.match.to(x.device)
            if keys is not None and mixed.mixed.any():  # the teacher must see the mixed views
                keys = keys.clone()
                keys[mixed.mixed.to(keys.device)] = self.teacher_keys(x[mixed.mixed]).to(keys.dtype)
        else:
            match = match_matrix(ids)
        feature, descriptor = self.student.features(self._inputs(x))
        nce, stats = self.infonce(descriptor, match)
        loss = self.config.infonce_weight * nce
        if self.directclr is not None:
            clr, clr_stats = self.directclr(descriptor, match)
            loss = loss + self.config.directclr_weight * clr
            stats |= clr_stats
        return loss, stats, (x, feature, keys)

    def _moco_terms(self, batch: dict):
        """MoCo + hard negatives (§3.3): q = student(view0); the EMA key encoder takes its step,
        then k = key encoder(view1), as MoCo. The student embeds view1 too only when the teacher
        sees both views (``kd_views: both``)."""
        views = batch["views"]
        b = views.shape[0]
        both = self.distill is not None and self.config.kd_views == "both"
        x = torch.cat([views[:, 0], views[:, 1]]) if both else views[:, 0]
        keys = None
        if "teacher" in batch:
            keys = torch.cat([batch["teacher"][:, 0], batch["teacher"][:, 1]]) if both else batch["teacher"][:, 0]
        feature, descriptor = self.student.features(self._inputs(x))
        self.key_encoder.update(self.student)
        moco_keys = self.key_encoder(self._inputs(views[:, 1]))
        moco, stats = self.moco(descriptor[:b].float(), moco_keys.float())
        return self.config.moco_weight * moco, stats, (x, feature, keys)

    # ---- optimisation (§1.5) -------------------------------------------------------------
    def learning_rate(self) -> float:
        if self.config.absolute_lr is not None:
            return self.config.absolute_lr
        global_batch = self.config.batch_size * max(1, self.trainer.world_size if self._trainer else 1)
        return self.config.base_lr * global_batch / 256

    def configure_optimizers(self):
        import timm.optim

        c = self.config
        lr = self.learning_rate()
        params = list(self.student.parameters())  # never the teacher or the EMA key encoder
        if self.kd_head is not None:
            params += list(self.kd_head.parameters())
        if c.optimizer == "lars":  # applied to all parameters, biases and BN included (§1.5)
            optimizer = timm.optim.Lars(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                        trust_coeff=0.001, eps=1e-8)
        elif c.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        batches = self.trainer.num_training_batches
        steps_per_epoch = int(batches) if batches not in (None, float("inf")) and batches > 0 else max(1, total // max(1, c.epochs))
        warmup = min(total - 1, int(round(c.warmup_epochs * steps_per_epoch)))

        def schedule(step: int) -> float:  # linear warmup from 0, then cosine to 0 (per step)
            if step < warmup:
                return step / max(1, warmup)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        if self.config.sync_bn and self._trainer is not None and self.trainer.world_size > 1:
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)  # never the teacher
            if self.key_encoder is not None:
                self.key_encoder.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(self.key_encoder.encoder)
