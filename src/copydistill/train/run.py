"""Assemble and run a training job: data, module, Lightning Trainer, validation, checkpoints,
export. ``copydistill train --config FILE [key=value ...]`` calls ``train``."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, default_collate

from copydistill.augment.sscd import SSCDAugment
from copydistill.config import TrainConfig, dump_config
from copydistill.errors import CopydistillError
from copydistill.io.atomic import atomic_write_text
from copydistill.models.descriptor import Descriptor
from copydistill.train.data import (
    CachedTeacherViews,
    EpochSampler,
    TwoViewImages,
    WithImageKeys,
    build_view_cache,
    image_teacher_keys,
    random_image_keys,
)
from copydistill.train.copies import TeacherCopies, image_embeddings
from copydistill.train.distillation import DistillationModule
from copydistill.train.gpu_views import TwoViewSources, collate_sources
from copydistill.train.module import DescriptorModule
from copydistill.train.outputs import resume_point
from copydistill.train.teacher import teacher_keys_for
from copydistill.train.validation import STUDENT_FILE, DiscValidation, save_student, student_descriptor

__all__ = ["STUDENT_FILE", "DiscValidation", "save_student", "student_descriptor", "train", "build_trainer"]
# ranks wait in a collective while rank 0 scores a validation set: longer than the 30-minute default
COLLECTIVE_TIMEOUT = timedelta(hours=3)


class ViewsData(L.LightningDataModule):
    """The training loader, and its position in the epoch as checkpoint state.

    Lightning saves ``state_dict`` in every checkpoint and calls ``load_state_dict`` on resume,
    so a run killed mid-epoch continues with exactly the batches it had not trained on. (The
    position is the loop's count of processed batches, not the loader's: Lightning fetches one
    batch ahead. Loader-level state would be restored too late here, because the schedule asks
    for the loader's length before the checkpoint is loaded.)
    """

    def __init__(self, dataset, config: TrainConfig, partners: list[np.ndarray] | None = None):
        super().__init__()
        self.dataset, self.config, self.partners = dataset, config, partners
        self.loader: DataLoader | None = None
        self.resume: tuple[int, int] | None = None  # (epoch, batches already trained on)

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        batch = min(self.config.data.batch_size, len(self.dataset) // world)
        if batch < 2:
            raise CopydistillError(f"{len(self.dataset)} training images are too few for {world} process(es)")
        sampler = EpochSampler(len(self.dataset), self.config.trainer.seed, rank, world, partners=self.partners)
        data = self.config.data
        workers = 0 if data.cached_views else data.workers  # a cache is in memory
        gpu_views = data.augment_device == "gpu"
        self.loader = DataLoader(self.dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                 collate_fn=collate_sources if gpu_views else default_collate,
                                 drop_last=True, persistent_workers=False,
                                 pin_memory=torch.cuda.is_available())
        self._apply_resume()
        return self.loader

    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        done = progress.processed if progress.processed < self.trainer.num_training_batches else 0
        return {"epoch": self.trainer.current_epoch, "batches": int(done)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.resume = (int(state["epoch"]), int(state["batches"]))
            self._apply_resume()

    def _apply_resume(self) -> None:
        """The checkpoint may be loaded before or after Lightning asks for the loader."""
        if self.resume is not None and self.loader is not None:
            epoch, batches = self.resume
            self.loader.sampler.resume_from(epoch, batches * self.loader.batch_size)


class ExportStudent(Callback):
    """At the end: the final student as ``student.pt`` (whitened when ``whiten_dims`` is set,
    train/whitening.py) and TorchScript/ONNX exports (and the same for the best)."""

    def __init__(self, out: Path, config: TrainConfig, progress: bool = True):
        self.out, self.config, self.progress = out, config, progress

    def on_train_end(self, trainer, module) -> None:
        if trainer.global_rank != 0:
            return
        save_student(module, self.out / "final" / STUDENT_FILE)
        folders = [self.out / "final"] + ([self.out / "best"] if (self.out / "best" / STUDENT_FILE).is_file() else [])
        for folder in folders:
            if self.config.student.whiten_dims:
                whiten_trained_student(folder / STUDENT_FILE, self.config, self.progress)
            export_student_files(folder, self.config.trainer.export)


def whitening_shrinkage(config: TrainConfig) -> float:
    """``whiten_shrinkage_distilled`` for a student trained with a teacher, when set; else
    ``whiten_shrinkage``."""
    s = config.student
    distilled = config.distillation is not None and s.whiten_shrinkage_distilled is not None
    return s.whiten_shrinkage_distilled if distilled else s.whiten_shrinkage


def whiten_trained_student(path: Path, config: TrainConfig, progress: bool = True) -> None:
    """``whiten_dims``: fit the whitening into ``path``. A failure leaves the raw student (and
    its exports) in place and says how to fit it later: the training is never lost."""
    from copydistill.train.whitening import whiten_student

    s = config.student
    images = s.whiten_images or config.data.train_images
    try:
        fit = whiten_student(path, images, s.whiten_dims, whitening_shrinkage(config),
                             s.whiten_max_images, seed=config.trainer.seed, progress=progress,
                             clamp=True, method=s.whiten_method, views=s.whiten_views)
    except CopydistillError as err:
        print(f"{path}: not whitened ({err}); the raw student is kept and exported. Fit it later "
              f"with `copydistill whiten --model {path} --images DIR`", flush=True)
        return
    fewer = f" (whiten_dims={s.whiten_dims}: only {fit.images} images)" if fit.dims < s.whiten_dims else ""
    how = f" and {fit.views} views of each (learned whitening)" if fit.method == "learned" else ""
    print(f"{path}: whitened to {fit.dims} dims on {fit.images} images of {images}{how}{fewer}", flush=True)


def export_student_files(folder: Path, formats: list[str]) -> list[Path]:
    from copydistill.models.export import export_descriptor
    from copydistill.models.registry import load_descriptor

    written = []
    descriptor = load_descriptor(f"ckpt:{folder / STUDENT_FILE}")
    for fmt in formats:
        path = folder / ("student.onnx" if fmt == "onnx" else "student.torchscript.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_descriptor(descriptor, fmt, path)
        written.append(path)
    return written


def load_teacher(spec: str | None, threads: int | None = None) -> Descriptor | None:
    """The teacher the spec names, as a Descriptor (None: no distillation)."""
    if spec is None:
        return None
    from copydistill.models.registry import load_descriptor

    return load_descriptor(spec, threads=threads)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX): only then does bf16
    autocast pay on a CPU; elsewhere (e.g. AVX2-only) oneDNN emulates it, ~10-40x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(config: TrainConfig, cuda: bool) -> str:
    """``precision: auto``: bf16-mixed on a GPU or a bf16-capable CPU, else 32-true."""
    trainer = config.trainer
    if trainer.precision != "auto":
        return trainer.precision
    return "bf16-mixed" if cuda or (trainer.accelerator in ("auto", "cpu") and cpu_has_bf16()) else "32-true"


def training_strategy(config: TrainConfig, cuda: bool) -> DDPStrategy | str:
    """DDP without buffer broadcasts when more than one process trains, else Lightning's default.

    ``broadcast_buffers=False``: DDP would otherwise copy rank 0's buffers to every rank before
    each forward — the memory bank, the MoCo queue and the key encoder, 128 MiB a step for a
    512-d 65,536-key bank — although every rank already enqueues the same gathered keys
    (losses/distributed.py) and the EMA follows identical parameters. BatchNorm statistics stay
    equal across ranks with ``sync_bn`` (the DISC recipes); without it each rank keeps its own and
    rank 0's are checkpointed.
    """
    t = config.trainer
    devices = (torch.cuda.device_count() if cuda else 1) if t.devices == "auto" else int(t.devices)
    if devices * t.num_nodes <= 1:
        return "auto"
    return DDPStrategy(broadcast_buffers=False, timeout=COLLECTIVE_TIMEOUT)


def build_trainer(config: TrainConfig, callbacks: list[Callback], progress: bool = True) -> L.Trainer:
    t = config.trainer
    out = Path(t.out_dir)
    cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    precision = resolve_precision(config, cuda)
    devices = t.devices if t.devices == "auto" else int(t.devices)
    return L.Trainer(
        default_root_dir=out, max_epochs=t.epochs, max_steps=t.max_steps,
        accelerator=t.accelerator, devices=devices, num_nodes=t.num_nodes,
        strategy=training_strategy(config, cuda),
        precision=precision, use_distributed_sampler=False, log_every_n_steps=t.log_every_n_steps,
        logger=[CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tensorboard")],
        callbacks=callbacks, enable_progress_bar=progress, num_sanity_val_steps=0,
        enable_model_summary=False, deterministic=False,
    )


def teacher_copies(dataset, threshold: float, images: str, teacher: Descriptor, cache_dir: Path,
                   progress: bool) -> TeacherCopies:
    """``kd_copy_threshold``: the train images the teacher sees as copies of each other, from
    the mean of each image's cached view keys, else the teacher's keys of the unedited images."""
    keys = dataset.keys if isinstance(dataset, (WithImageKeys, CachedTeacherViews)) else None
    if keys is None:  # no teacher keys came with the views: the unedited images' keys
        keys = image_teacher_keys(images, teacher, cache_dir, progress)
    copies = TeacherCopies(image_embeddings(keys), threshold)
    if progress:
        print(f"teacher-mined copies: {copies.pairs} pairs among {len(keys)} train images "
              f"(cosine > {threshold})", flush=True)
    return copies


def train(config: TrainConfig, resume: str | None = None, progress: bool = True) -> Path:
    """Run ``config``; returns the output folder. Resumes from ``resume`` (or ``last.ckpt``)."""
    data, trainer, kd = config.data, config.trainer, config.distillation
    out = Path(trainer.out_dir)
    if not data.train_images:
        raise CopydistillError("train_images is not set: pass train_images=FOLDER")
    ckpt = resume_point(config, resume)  # refuses another run's out_dir and unsafe checkpoints
    L.seed_everything(trainer.seed, workers=True, verbose=False)
    teacher_descriptor = load_teacher(kd.teacher if kd else None)
    augment = SSCDAugment(data.augmentations, data.image_size, data.crop_scale_min)
    cache_dir = data.cache_dir or out / "cache"
    view_teacher = teacher_descriptor if kd and kd.target == "view" else None
    view_seed = trainer.seed if data.view_seed is None else data.view_seed
    if data.cached_views:
        dataset = build_view_cache(data.train_images, augment, data.cached_views, view_teacher,
                                   cache_dir, trainer.seed, progress=progress, view_seed=view_seed)
    elif data.augment_device == "gpu":  # the views are made on the training device (train/gpu_views.py)
        dataset = TwoViewSources(data.train_images, augment, view_seed)
    else:
        dataset = TwoViewImages(data.train_images, augment, view_seed)
    if kd and kd.target == "clean":
        dataset = WithImageKeys(dataset, image_teacher_keys(data.train_images, teacher_descriptor,
                                                            cache_dir, progress))
    elif kd and kd.target == "random":  # the control: seeded by the views' seed, not the trainer's
        dataset = WithImageKeys(dataset, random_image_keys(len(dataset), teacher_descriptor.dims, view_seed))
    copies = None
    if kd and kd.copy_threshold:
        copies = teacher_copies(dataset, kd.copy_threshold, data.train_images, teacher_descriptor,
                                cache_dir, progress)
    if teacher_descriptor is None:
        module = DescriptorModule(config)
    else:
        teacher = teacher_keys_for(teacher_descriptor, bf16_on_gpu=trainer.precision != "32-true",
                                   channels_last=config.student.channels_last)
        module = DistillationModule(config, teacher, copies)
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,  # last.ckpt
                        **({"every_n_train_steps": trainer.checkpoint_every_n_steps}
                           if trainer.checkpoint_every_n_steps else {"every_n_epochs": 1})),
        LearningRateMonitor(logging_interval="step"),
        ExportStudent(out, config, progress),
    ]
    if data.val_data:
        callbacks.insert(0, DiscValidation(data.val_data, data.val_resize, trainer.val_every_n_epochs, out,
                                               workers=max(2, data.workers)))
    trainer = build_trainer(config, callbacks, progress)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(config))  # only now that training starts
    with warnings.catch_warnings():  # the module's on_after_batch_transfer (augment_device: gpu) is meant
        warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")
        partners = None if copies is None else copies.partners()
        trainer.fit(module, datamodule=ViewsData(dataset, config, partners), ckpt_path=ckpt, weights_only=True)
    return out

