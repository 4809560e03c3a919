"""In-training validation: µAP on a DISC-layout set (method.md §4.1), embedded by every rank on
its own device, and the best student kept in ``best/``.

Each rank embeds its share of the chunks of every split (``embed_records_in_group``, the chunks
of the data-parallel embedding) with a copy of the student on its own device; rank 0 matches and
scores, then sends µAP to every rank, so all ranks log the same value and reach their next
collective together. The best µAP so far is callback state, saved in every checkpoint, so a
resumed run only replaces ``best/`` with a better student.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from copydistill.errors import CopydistillError
from copydistill.io.atomic import atomic_write, atomic_write_text
from copydistill.models.backbones import PixelModel
from copydistill.models.descriptor import ResizePolicy
from copydistill.models.torch_descriptor import TorchDescriptor

STUDENT_FILE = "student.pt"


def student_descriptor(module, resize: str, name: str = "student",
                       device: torch.device | str = "cpu") -> TorchDescriptor:
    """The student as a Descriptor: an eval-mode copy on ``device`` (training is untouched).

    In a process group (a collective: every rank calls it) the copy takes rank 0's buffers:
    without SyncBN each rank keeps its own BatchNorm statistics (buffers are not broadcast,
    ``run.training_strategy``), and rank 0's are the ones checkpoints and ``best/`` hold. In eval
    mode a SyncBN student embeds with its running statistics, without collectives."""
    student = copy.deepcopy(module.student).to(device).eval()
    if dist.is_available() and dist.is_initialized():  # every rank embeds with rank 0's student
        for buffer in student.buffers():
            dist.broadcast(buffer, src=0)
    c = module.config.student
    return TorchDescriptor(PixelModel(student), name, c.dims, ResizePolicy.parse(resize),
                           identity=f"{c.arch}-trained", device=str(device))


def save_student(module, path: Path) -> None:
    """A self-describing student file (tensors and plain values: loads with weights_only=True)."""
    c = module.config.student
    payload = {"arch": c.arch, "dims": c.dims, "kd_dim": c.kd_dim, "gem_p": c.gem_p, "head_norm": c.head_norm,
               "resize": module.config.data.val_resize,
               "state_dict": {k: v.cpu() for k, v in module.student.state_dict().items()}}
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def _from_rank_zero(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (a collective); ``obj`` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DiscValidation(Callback):
    """µAP on a DISC-layout set after every ``every`` epochs (and the last); keeps the best."""

    def __init__(self, data: str, resize: str, every: int, out: Path, workers: int = 2):
        from copydistill.data.disc import DiscLayout

        self.layout = DiscLayout.find(data)
        self.resize, self.every, self.out, self.workers = resize, every, out, workers
        self.best = -1.0

    # the best record travels in checkpoints (Lightning stores a callback's state_dict)
    def state_dict(self) -> dict:
        return {"best": float(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state.get("best", -1.0))

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every and epoch + 1 != trainer.max_epochs:
            return
        from functools import partial

        from copydistill.eval.disc import evaluate_disc
        from copydistill.eval.distributed_embed import embed_records_in_group

        folder = self.out / "val" / f"epoch-{epoch:04d}"
        descriptor = student_descriptor(module, self.resize, device=module.device)
        failure, summary = None, None
        try:
            result = evaluate_disc(self.layout, descriptor, folder, progress=False,
                                   embed=partial(embed_records_in_group, workers=self.workers))
            summary = None if result is None else result.summary()
        except Exception as err:  # noqa: BLE001 -- rank 0's scoring failed: every rank must hear of it
            if trainer.world_size == 1:
                raise
            failure = f"{type(err).__name__}: {err}"
        summary, failure = _from_rank_zero((summary, failure))
        if failure is not None:
            raise CopydistillError(f"validation on {self.layout.root}: {failure}")
        module.log("val/uAP", float(summary["uAP"]), sync_dist=False)
        if summary["uAP_SN"] is not None:
            module.log("val/uAP_SN", float(summary["uAP_SN"]), sync_dist=False)
        if summary["uAP"] > self.best:
            self.best = float(summary["uAP"])
            if trainer.is_global_zero:
                save_student(module, self.out / "best" / STUDENT_FILE)
                atomic_write_text(self.out / "best" / "metrics.json",
                                  json.dumps(summary | {"epoch": epoch}))
