"""Data-parallel embedding on Lightning: one cache folder filled by many processes (GPUs, nodes).

The records are cut into the chunks of ``embed_records`` (``CHUNK`` images each), grouped in its
windows (``WINDOW_CHUNKS`` chunks, batched together); window i goes to global rank
i % world size, which writes its chunks' ``part-*.npz`` files into the cache folder. So a
killed job resumes from the finished parts, whatever its new world size. When every rank is done,
rank 0 reads the parts in chunk order and writes ``embeddings.npz`` and ``skipped.tsv`` with the
very code ``embed_records`` uses: same ids, same order, same vectors (bit for bit on the same
device and thread count).

Launching: one process per device. A plain ``copydistill ... --devices N`` starts the other
N - 1 processes itself (Lightning re-runs the command line); under ``torchrun`` or SLURM's
``srun`` the launcher starts them and Lightning reads the ranks from the environment. The cache
folder must be on a filesystem every node sees.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

from copydistill.errors import CopydistillError
from copydistill.eval.embed import OnError, assemble_parts, embed_window, window_chunks, window_starts
from copydistill.io.embeddings import (
    Embeddings,
    cache_meta,
    chunk_starts,
    load_finished,
    load_part,
    part_path,
    start_cache,
)
from copydistill.io.records import ImageRecord
from copydistill.models.descriptor import Descriptor
from copydistill.models.torch_descriptor import TorchDescriptor

ACCELERATORS = ("cpu", "gpu", "auto")
# ranks wait for the slowest shard (and rank 0's assembly) in collectives: no 30-minute timeout
SHARD_WAIT = timedelta(hours=24)


def rank_windows(count: int, rank: int, world_size: int, per_window: int | None = None) -> list[list[int]]:
    """The windows (lists of ``per_window`` chunk starts, ``window_starts``) of ``count`` records
    that ``rank`` embeds: every ``world_size``-th window, from window ``rank`` on (disjoint, no
    padding)."""
    return window_starts(count, per_window)[rank::world_size]


def rank_chunks(count: int, rank: int, world_size: int, per_window: int | None = None) -> list[int]:
    """The start offsets of the chunks ``rank`` embeds (those of its ``rank_windows``)."""
    return [start for window in rank_windows(count, rank, world_size, per_window) for start in window]


class _ChunkStarts(Dataset):
    """This rank's windows, one item each (a list of chunk starts)."""

    def __init__(self, starts: list[list[int]]):
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> int:
        return self.starts[index]


class ChunkEmbedder(L.LightningModule):
    """Embeds this rank's chunks of ``records`` and writes their part files into ``out``.

    A torch descriptor's network is a submodule, so Lightning moves it to the rank's device;
    other descriptors (ONNX, pHash) run on the rank's CPU. An error is kept, not raised, so
    every rank reaches the collective that reports it (see ``embed_records_distributed``).
    """

    def __init__(self, descriptor: Descriptor, records: list[ImageRecord], out: Path,
                 on_error: OnError, workers: int):
        super().__init__()
        self.descriptor = descriptor
        self.network = descriptor.module if isinstance(descriptor, TorchDescriptor) else None
        self.records = records
        self.out = out
        self.on_error = on_error
        self.workers = workers
        self.failure: tuple[str, BaseException] | None = None  # (where, error)
        # a rank may have no chunk (fewer chunks than ranks): it just waits for the others
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self._pool: ThreadPoolExecutor | None = None

    def setup(self, stage: str) -> None:
        # every rank runs this (even one with no chunks); rank 0 readies the folder first
        failure = None
        if self.trainer.is_global_zero:
            try:
                start_cache(self.out, cache_meta(self.descriptor.fingerprint(), self.records))
            except Exception as err:  # noqa: BLE001 -- reported to every rank
                failure = ("preparing the cache folder", err)
        _raise_first_failure(failure)

    def predict_dataloader(self) -> DataLoader:
        per_window = window_chunks(self.descriptor, self.device if self.network is not None else None)
        windows = rank_windows(len(self.records), self.global_rank, self.trainer.world_size, per_window)
        return DataLoader(_ChunkStarts(windows), batch_size=None, shuffle=False, num_workers=0)

    def on_predict_start(self) -> None:
        if isinstance(self.descriptor, TorchDescriptor):
            self.descriptor.device = self.device
        self._pool = ThreadPoolExecutor(max_workers=self.workers)

    def predict_step(self, window: list[int], batch_idx: int) -> None:
        if self.failure is not None:
            return
        window = [int(start) for start in window]
        try:
            embed_window(self.descriptor, self.records, window, self.out, self.on_error, self._pool)
        except Exception as err:  # noqa: BLE001 -- reported to every rank after the loop
            self.failure = (f"embedding the chunks from image {window[0]}", err)

    def on_predict_end(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _gather(obj: object) -> list[object]:
    """``obj`` from every rank, in rank order (a collective: it also waits for every rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _raise_first_failure(failure: tuple[str, BaseException] | None) -> None:
    """Raise on every rank when any rank failed (``failure`` = (what it was doing, error)): the
    failing rank its own error, the others a CopydistillError naming it, so none waits forever."""
    reports = _gather(None if failure is None else
                      f"{failure[0]}: {type(failure[1]).__name__}: {failure[1]}")
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if not failed:
        return
    if failure is not None:
        raise failure[1]
    rank, report = failed[0]
    raise CopydistillError(f"rank {rank} failed {report}")


def _read_parts(out: Path, count: int) -> list:
    """Every chunk's part, in chunk order (rank 0, once all ranks are done)."""
    paths = [part_path(out, start) for start in chunk_starts(count)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CopydistillError(
            f"{len(missing)} part file(s) missing after every rank finished, e.g. {missing[0]}: "
            f"is {out} on a filesystem every node shares?"
        )
    return [load_part(p) for p in paths]


def _check_options(accelerator: str, devices: int, num_nodes: int, out_dir) -> None:
    if out_dir is None:
        raise CopydistillError("distributed embedding needs an output folder (on a filesystem every node sees)")
    if accelerator not in ACCELERATORS:
        raise CopydistillError(f"--accelerator {accelerator!r}: use one of {', '.join(ACCELERATORS)}")
    if not isinstance(devices, int) or devices < 1:
        raise CopydistillError(f"--devices {devices!r}: give the number of processes per node (1 or more)")
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise CopydistillError(f"--num-nodes {num_nodes!r}: give the number of nodes (1 or more)")
    launched = os.environ.get("WORLD_SIZE")  # set by torchrun (and by Lightning for its own ranks)
    if launched and launched.isdigit() and int(launched) != devices * num_nodes:
        raise CopydistillError(
            f"started as {launched} processes (WORLD_SIZE), but --devices {devices} x --num-nodes "
            f"{num_nodes} = {devices * num_nodes}; make them agree (torchrun --nproc-per-node = --devices)"
        )
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise CopydistillError("--accelerator gpu, but no CUDA GPU is visible; use --accelerator cpu or auto")


def build_trainer(accelerator: str, devices: int, num_nodes: int, out: Path, progress: bool) -> L.Trainer:
    """A predict-only Trainer: DDP when there is more than one process, nothing logged."""
    strategy = DDPStrategy(timeout=SHARD_WAIT) if devices * num_nodes > 1 else "auto"
    try:
        return L.Trainer(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
            logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=progress, use_distributed_sampler=False, default_root_dir=out,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as err:  # e.g. more devices than GPUs
        raise CopydistillError(
            f"cannot run on accelerator={accelerator}, devices={devices}, num_nodes={num_nodes}: {err}"
        ) from err


def embed_records_in_group(
    descriptor: Descriptor,
    records: list[ImageRecord],
    out_dir: str | Path,
    on_error: OnError = "skip",
    desc: str = "embed",
    progress: bool = False,
    workers: int = 2,
) -> Embeddings | None:
    """``embed_records`` by every process of the process group already running (a training
    job's, for in-training validation): the chunks of ``embed_records_distributed``, each rank
    on its own device, no new Trainer. Every rank must call it; rank 0 returns the embeddings,
    the others None. ``out_dir`` must be on a filesystem every node sees. ``desc`` and
    ``progress`` are unused (no bar inside a training loop).
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    out = Path(out_dir)
    meta = cache_meta(descriptor.fingerprint(), records)
    failure = None
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            start_cache(out, meta)
        except Exception as err:  # noqa: BLE001 -- reported to every rank
            failure = ("preparing the cache folder", err)
    _raise_first_failure(failure)  # also the barrier: the folder is ready for every rank
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for window in rank_windows(len(records), rank, world, window_chunks(descriptor)):
            try:
                embed_window(descriptor, records, window, out, on_error, pool)
            except Exception as err:  # noqa: BLE001 -- reported to every rank after the loop
                failure = (f"embedding the chunks from image {window[0]}", err)
                break
    _raise_first_failure(failure)
    result = None
    if rank == 0:
        try:
            result = assemble_parts(_read_parts(out, len(records)), descriptor.dims, out)
        except Exception as err:  # noqa: BLE001 -- reported to every rank
            failure = ("assembling the parts", err)
    _raise_first_failure(failure)
    return result


def embed_records_distributed(
    descriptor: Descriptor,
    records: list[ImageRecord],
    out_dir: str | Path,
    on_error: OnError = "skip",
    desc: str = "embed",
    progress: bool = True,
    workers: int | None = None,
    *,
    accelerator: str = "auto",
    devices: int = 1,
    num_nodes: int = 1,
) -> Embeddings | None:
    """``embed_records`` run by ``devices`` x ``num_nodes`` processes; the cache in ``out_dir``
    is the same (and interchangeable with a single-process run's).

    Returns the embeddings on global rank 0 and None on every other rank (whose caller should
    leave the rest of the work to rank 0). ``workers`` decoding threads per process default to
    this node's CPUs shared among its ``devices`` processes (at least 2). ``desc`` is unused
    (Lightning draws the progress bar).
    """
    _check_options(accelerator, devices, num_nodes, out_dir)
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
        workers = max(2, cpus // devices)
    out = Path(out_dir)
    trainer = build_trainer(accelerator, devices, num_nodes, out, progress)
    meta = cache_meta(descriptor.fingerprint(), records)
    final = load_finished(out, meta)
    if final is not None:
        return final if trainer.is_global_zero else None

    embedder = ChunkEmbedder(descriptor, records, out, on_error, workers)
    device = descriptor.device if isinstance(descriptor, TorchDescriptor) else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*predict returned None.*")  # parts go to files
            trainer.predict(embedder, return_predictions=False)
        _raise_first_failure(embedder.failure)
        result, assembly_failure = None, None
        if trainer.is_global_zero:
            try:
                result = assemble_parts(_read_parts(out, len(records)), descriptor.dims, out)
            except Exception as err:  # noqa: BLE001 -- reported to every rank
                assembly_failure = ("assembling the parts", err)
        _raise_first_failure(assembly_failure)
        return result
    finally:
        if device is not None:  # back where the caller had it
            descriptor.module.to(device).eval()
            descriptor.device = device

