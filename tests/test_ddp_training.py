"""The real ``train`` in two CPU processes (gloo), as torchrun would start them, plus the best-µAP
record across a resume.

(a) The trainer's DDP does not broadcast buffers (``broadcast_buffers=False``, design.md "Scale"):
    a mark written into rank 1's memory bank before a step survives that step's forward, while
    the rows both ranks enqueued are identical (each rank enqueues the same gathered keys,
    method.md §2.4).
(b) In-training validation is embedded by both ranks (chunks i % 2, on each rank's device) and
    both ranks log the µAP rank 0 scored; it equals a single-process evaluation of the best
    student.
(c) The best µAP is checkpoint state: a resumed run does not replace ``best/`` with a worse
    student on its first validation.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo unavailable"
)

TINY = ["arch=mobilenetv4_conv_small", "dims=32", "image_size=32", "batch_size=4", "workers=0",
        "augmentations=STRONG_BLUR", "accelerator=cpu", "precision=32-true", "log_every_n_steps=1",
        "warmup_epochs=1", "epochs=1", "export=[]", "seed=0", "val_resize=square:48"]
KD = ["teacher=mobilenetv4_conv_small:dims=32,seed=3", "bank_size=64", "kd_weight=1.0"]
MARK_ROW, MARK = 63, 7.0  # a slot 2 steps x 2 ranks x 8 keys never reach
SMALL_CHUNK = 8  # so that each validation split has chunks for both ranks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, images: str, bench: str, out: str, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    from lightning.pytorch.callbacks import Callback

    import copydistill.eval.distributed_embed as distributed_embed
    import copydistill.eval.embed as embed
    import copydistill.io.embeddings as store
    import copydistill.train.run as run
    from copydistill.config import load_config

    store.CHUNK, embed.CPU_WINDOW_CHUNKS = SMALL_CHUNK, 1
    embedded: list[int] = []
    original_window = distributed_embed.embed_window

    def recording_window(descriptor, records, window, *args, **kwargs):
        embedded.extend(int(start) for start in window)
        return original_window(descriptor, records, window, *args, **kwargs)

    distributed_embed.embed_window = recording_window
    report: dict = {"banks": []}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            report["ddp_broadcast_buffers"] = trainer.strategy.model.broadcast_buffers
            if trainer.global_step == 1 and trainer.global_rank == 1:
                module.distill.bank.queue[MARK_ROW].fill_(MARK)

        def on_train_batch_end(self, trainer, module, *args):
            bank = module.distill.bank
            report["banks"].append((bank.queue.clone(), int(bank.pointer), int(bank.filled)))

        def on_train_epoch_end(self, trainer, module):
            report["uAP"] = float(trainer.callback_metrics["val/uAP"])

    original = run.build_trainer
    run.build_trainer = lambda c, callbacks, progress=True: original(c, callbacks + [Probe()], progress)
    config = load_config(None, [f"train_images={images}", f"out_dir={out}", f"val_data={bench}", *TINY, *KD,
                                "devices=2", "sync_bn=true", "max_steps=2"])
    run.train(config, progress=False)
    report["embedded"] = embedded
    torch.save(report, os.path.join(results, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from copydistill.data.procedural import procedural_image

    folder = tmp_path_factory.mktemp("ddp_images")
    for i in range(16):
        procedural_image(i, long_side=(64, 96)).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def ddp_run(images, tiny_benchmark, tmp_path_factory):
    out, results = tmp_path_factory.mktemp("ddp_out"), tmp_path_factory.mktemp("ddp_results")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, str(images), str(tiny_benchmark), str(out), str(results)))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    files = [results / f"rank{r}.pt" for r in range(2)]
    if not all(f.is_file() for f in files):
        pytest.fail(f"DDP training workers failed (exit codes {[p.exitcode for p in procs]})")
    return out, [torch.load(f, weights_only=False) for f in files]


def test_ddp_does_not_broadcast_the_bank_and_ranks_enqueue_the_same_keys(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0["ddp_broadcast_buffers"] is False and r1["ddp_broadcast_buffers"] is False
    assert len(r0["banks"]) == len(r1["banks"]) == 2
    for (q0, p0, f0), (q1, p1, f1) in zip(r0["banks"], r1["banks"]):
        assert p0 == p1 and f0 == f1
        assert torch.equal(q0[:p0], q1[:p1])  # the gathered keys, identical on both ranks
    (q0, p0, _), (q1, _, _) = r0["banks"][-1], r1["banks"][-1]
    assert p0 == 2 * 2 * 8  # 2 steps x 2 ranks x (2 views x 4 images)
    # rank 1's mark survived the step's forward: rank 0's bank was not copied over it
    assert torch.all(q1[MARK_ROW] == MARK) and not torch.all(q0[MARK_ROW] == MARK)
    assert torch.equal(q0[p0:MARK_ROW], q1[p0:MARK_ROW])


def test_validation_is_embedded_by_both_ranks_and_scored_once(ddp_run, tiny_benchmark, tmp_path):
    from copydistill.data.disc import DiscLayout, disc_records
    from copydistill.eval.disc import evaluate_disc
    from copydistill.models.registry import load_descriptor

    out, (r0, r1) = ddp_run
    layout = DiscLayout.find(tiny_benchmark)
    sizes = [len(disc_records(f)) for f in (layout.queries, layout.references, layout.train)]
    starts = lambda rank: sorted(s for n in sizes for s in range(0, n, SMALL_CHUNK)[rank::2])  # noqa: E731
    assert r1["embedded"] and sorted(r0["embedded"]) == starts(0) and sorted(r1["embedded"]) == starts(1)
    assert r0["uAP"] == r1["uAP"]
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["uAP"] == pytest.approx(r0["uAP"], abs=1e-6)
    student = load_descriptor(f"ckpt:{out / 'best' / 'student.pt'}")
    single = evaluate_disc(layout, student, tmp_path / "single", progress=False).summary()
    assert single["uAP"] == pytest.approx(r0["uAP"], abs=1e-4)


def test_best_record_survives_a_resume(images, tiny_benchmark, tmp_path):
    from copydistill.config import load_config
    from copydistill.train.run import train
    from copydistill.train.validation import DiscValidation

    torch.set_num_threads(1)
    options = [f"train_images={images}", f"out_dir={tmp_path / 'run'}", f"val_data={tiny_benchmark}",
               *TINY, "devices=1", "sync_bn=false"]
    train(load_config(None, options), progress=False)
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    first = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    state = ckpt["callbacks"][DiscValidation.__qualname__]
    assert state["best"] == pytest.approx(first["uAP"])
    state["best"] = 1.5  # a record no student beats: the resumed validation must keep best/
    torch.save(ckpt, ckpt_path)
    train(load_config(None, [*options, "epochs=2"]), progress=False)
    assert (tmp_path / "run" / "val" / "epoch-0001").is_dir()  # it did validate after the resume
    assert json.loads((tmp_path / "run" / "best" / "metrics.json").read_text()) == first
