"""The LightningModule: SSCD's objective (method.md §1) plus, when a teacher is given, memory-bank
similarity distillation (§2.4) — one module, the distillation terms switched on by the config.

Batches hold uint8 views ``(B, 2, 3, S, S)``, their image ``index`` and optionally precomputed
``teacher`` keys ``(B, 2, D)``. Views are laid out [view0 of all; view1 of all] (§1.2), mixed up
on the device (§1.4), normalised inside the step, and seen by the teacher exactly as the student
sees them.
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
from copydistill.losses.distill import MemoryBank, SimilarityDistillation
from copydistill.losses.distributed import world
from copydistill.models.backbones import EmbeddingModel
from copydistill.models.descriptor import Descriptor
from copydistill.models.gem import PixelInput


class CopyDetectionModule(L.LightningModule):
    def __init__(self, config: TrainConfig, teacher: Descriptor | nn.Module | None = None,
                 teacher_dims: int | None = None):
        super().__init__()
        self.config = config
        self.save_hyperparameters({"config": vars(config)})
        self.student = EmbeddingModel(config.arch, dims=config.dims, kd_dim=config.kd_dim, gem_p=config.gem_p)
        self.pixels = PixelInput()
        self.infonce = InfoNCEEntropy(config.infonce_temperature, config.entropy_weight)
        self.directclr = DirectCLR(config.directclr_dim, config.infonce_temperature) if config.directclr_dim else None
        self.mixup = ContrastiveMixup() if config.mixup else None
        # the teacher is deliberately not a registered submodule: it is frozen, excluded from
        # SyncBN conversion and DDP, and kept out of checkpoints (§2.8 bug 2)
        object.__setattr__(self, "teacher", teacher)
        self.distill = None
        if config.teacher is not None or teacher is not None:
            dims = teacher_dims or getattr(teacher, "dims", None) or config.kd_dim or config.dims
            if dims != self.student.feature_dim:
                raise ValueError(
                    f"teacher gives {dims}-d keys but the student's distilled feature is "
                    f"{self.student.feature_dim}-d; set dims (or kd_dim for a compact student) to {dims}"
                )
            self.distill = SimilarityDistillation(
                MemoryBank(dims, config.bank_size, seed=config.seed),
                config.kd_teacher_temperature, config.kd_student_temperature,
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
        views = batch["views"]
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]])
        ids = torch.cat([batch["index"], batch["index"]])
        keys = torch.cat([batch["teacher"][:, 0], batch["teacher"][:, 1]]) if "teacher" in batch else None
        if self.mixup is not None:
            rank, _ = world()  # seeded by (seed, step, rank): a resumed run mixes the same rows
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.config.seed, self.global_step, rank]).generate_state(1)[0]))
            mixed = self.mixup(x, generator)
            x = mixed.images
            rank, size = world()
            match = torch.zeros(2 * b, 2 * b * size, dtype=torch.bool, device=x.device)
            match[:, rank * 2 * b : (rank + 1) * 2 * b] = mixed.match.to(x.device)
            if keys is not None and mixed.mixed.any():  # the teacher must see the mixed views
                keys = keys.clone()
                keys[mixed.mixed.to(keys.device)] = self.teacher_keys(x[mixed.mixed]).to(keys.dtype)
        else:
            match = match_matrix(ids)
        inputs = self.pixels(x.permute(0, 2, 3, 1))
        if self.config.channels_last and inputs.is_cuda:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        feature, descriptor = self.student.features(inputs)
        nce, stats = self.infonce(descriptor, match)
        loss = self.config.infonce_weight * nce
        if self.directclr is not None:
            clr, clr_stats = self.directclr(descriptor, match)
            loss = loss + self.config.directclr_weight * clr
            stats |= clr_stats
        if self.distill is not None:
            if keys is None:
                keys = self.teacher_keys(x)
            kd, kd_stats = self.distill(feature.float(), keys.to(feature.device))
            loss = loss + self.config.kd_weight * kd
            stats |= kd_stats
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=b)
        return loss

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
        params = self.student.parameters()
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
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)  # student only
