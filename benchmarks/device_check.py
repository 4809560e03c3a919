"""The one prepared device check of issue 14, item 5 (driven by benchmarks/device_check.sh).

Sections (each writes OUT/<section>.json):

* ``prepare`` (here, on the CPU, before the call): the int8 teacher's key of every unedited train
  image of a real-photo benchmark (``kd_target: clean``), saved beside the benchmark in the
  carried folder, with the teacher's fingerprint: the device needs no ONNX Runtime.
* ``kd`` — end-to-end KD training views/s from JPEG files on disk: seed-style (fp32, NCHW, PIL/AugLy
  views in CPU loader workers) against ours (bf16, channels_last, ``augment_device: gpu``), for
  ``mobilenet_v3_large_seed`` and ``resnet18`` with an SSCD-shaped ResNet-50 teacher
  (``sscd-torchvision:PATH`` weights if given, else **randomly initialised** — this measures
  throughput, not accuracy; the JSON says which).
* ``embed`` — embedding img/s from JPEG files (``embed_records``, short:288) for the teacher and
  the students.
* ``train`` — a real ``copydistill train`` (Lightning) of the quickstart recipe on the device
  (bf16, ``augment_device: gpu``, ``kd_target: clean`` with the prepared keys) for ``--minutes``,
  then ``copydistill eval disc`` of its student on the carried benchmark.

``--dry-run``: CPU, tiny images and a few steps, to check the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _write(out: Path, name: str, data) -> None:
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(json.dumps({name: data}), flush=True)


def _jpegs(folder: Path, n: int, long_side: tuple[int, int]) -> Path:
    from copydistill.data.procedural import procedural_image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        procedural_image(i, long_side=long_side).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def _teacher_module(weights: str | None, device: str):
    import torch

    from copydistill.models.backbones import PixelModel
    from copydistill.models.teachers import FrozenTeacher, SSCDResNet50

    if weights and Path(weights).is_file():
        from copydistill.models.registry import load_descriptor

        return load_descriptor(f"sscd-torchvision:{weights}", device=device).module, "sscd-torchvision weights"
    return PixelModel(FrozenTeacher(SSCDResNet50())).to(device).eval(), "random init (throughput only)"


def kd(args, out: Path) -> None:
    import torch

    from copydistill.augment.sscd import SSCDAugment
    from copydistill.config import config_from_dict
    from copydistill.train.data import TwoViewImages
    from copydistill.train.gpu_views import TwoViewSources
    from copydistill.train.distillation import DistillationModule
    from copydistill.train.run import ViewsData
    from copydistill.train.teacher import TorchTeacher

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    folder = args.images
    teacher_module, teacher_kind = _teacher_module(args.teacher_weights, device)
    rows = []
    for student in args.students:
        for label, bf16, cl, aug in (("seed-style fp32, CPU views", False, False, "cpu"),
                                     ("ours bf16 + channels_last, GPU views", True, True, "gpu")):
            if device == "cpu":
                bf16 = False  # emulated on AVX2 CPUs (docs/quickstart.md)
            config = config_from_dict(dict(
                arch=student, dims=512, batch_size=args.batch, image_size=args.size, mixup=False,
                augmentations="ADVANCED", teacher="sscd-r50", bank_size=args.bank, channels_last=cl,
                augment_device=aug, workers=args.workers, train_images=str(folder),
                precision="bf16-mixed" if bf16 else "32-true"))
            d = config.data
            augment = SSCDAugment(d.augmentations, d.image_size, d.crop_scale_min)
            dataset = (TwoViewSources if aug == "gpu" else TwoViewImages)(str(folder), augment, 0)
            tm = teacher_module.to(memory_format=torch.channels_last) if cl else teacher_module
            module = DistillationModule(config, TorchTeacher(tm, 512, bf16_on_gpu=bf16, channels_last=cl)).to(device)
            if cl:
                module.student.to(memory_format=torch.channels_last)
            module.log = lambda *a, **k: None
            module.log_dict = lambda *a, **k: None
            optimizer = torch.optim.SGD(module.student.parameters(), lr=0.01, momentum=0.9)
            loader = ViewsData(dataset, config).train_dataloader()
            steps, views, start, deadline = 0, 0, None, time.perf_counter() + args.seconds
            while time.perf_counter() < deadline:
                for batch in loader:
                    batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
                             for k, v in batch.items()}
                    batch = module.on_after_batch_transfer(batch, 0)
                    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                        loss = module.training_step(batch, steps)["loss"]
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    if steps == args.warmup:
                        if device == "cuda":
                            torch.cuda.synchronize()
                        start, views = time.perf_counter(), 0
                    elif start is not None:
                        views += 2 * batch["index"].numel()
                    if time.perf_counter() > deadline or steps >= args.max_steps:
                        break
                if steps >= args.max_steps:
                    break
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start if start else float("nan")
            rows.append(dict(student=student, label=label, bf16=bf16, channels_last=cl, augment_device=aug,
                             batch=args.batch, size=args.size, workers=args.workers, steps_timed=steps - args.warmup,
                             views_per_s=views / elapsed if start and elapsed > 0 else None))
            print(rows[-1], flush=True)
            del module, optimizer, loader
    for r in rows:
        base = next(x for x in rows if x["student"] == r["student"] and x["augment_device"] == "cpu")
        r["ratio_vs_seed_style"] = (r["views_per_s"] / base["views_per_s"]
                                    if r["views_per_s"] and base["views_per_s"] else None)
    _write(out, "kd", dict(device=device, teacher=teacher_kind, images=str(folder), rows=rows))


def embed(args, out: Path) -> None:
    import torch

    from copydistill.eval.embed import embed_records
    from copydistill.io.records import folder_records
    from copydistill.models.registry import load_descriptor

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    records = folder_records(args.images)
    rows = []
    specs = [f"{s}:dims=512,seed=0" for s in args.students]
    if args.teacher_weights and Path(args.teacher_weights).is_file():
        specs.insert(0, f"sscd-torchvision:{args.teacher_weights}")
    for spec in specs:
        descriptor = load_descriptor(spec, resize=args.resize, device=device)
        with tempfile.TemporaryDirectory() as tmp:
            embed_records(descriptor, records[: min(len(records), 64)], Path(tmp) / "warm", progress=False,
                          workers=max(1, args.workers))  # warm-up
            start = time.perf_counter()
            embed_records(descriptor, records, Path(tmp) / "store", progress=False, workers=max(1, args.workers))
            s = time.perf_counter() - start
        rows.append(dict(model=spec, images=len(records), resize=args.resize, img_per_s=len(records) / s))
        print(rows[-1], flush=True)
    if not (args.teacher_weights and Path(args.teacher_weights).is_file()):
        rows.append(dict(model="sscd-r50 teacher", note="no torchvision weights carried: teacher embedding "
                         "not measured from files (its model cost is in the kd section)"))
    _write(out, "embed", dict(device=device, rows=rows))


class _KeysOnlyTeacher:
    """Stands in for the int8 teacher on the device: ``kd_target: clean`` reads the prepared keys,
    so the teacher itself is never run there."""

    def __init__(self, fingerprint: dict):
        self._fingerprint, self.dims, self.name = fingerprint, fingerprint["dims"], fingerprint["model"]

    def fingerprint(self) -> dict:
        return self._fingerprint

    def embed_batch(self, batch):
        raise RuntimeError("the prepared keys should have been used (kd_target: clean)")


def prepare(args, out: Path) -> None:
    import numpy as np

    from copydistill.models.registry import load_descriptor
    from copydistill.train.data import image_teacher_keys

    bench = args.bench
    teacher = load_descriptor(args.teacher)
    with tempfile.TemporaryDirectory() as tmp:
        keys = image_teacher_keys(bench / "images" / "train", teacher, tmp, progress=True)
    np.save(bench / "teacher-keys.npy", keys)
    (bench / "teacher-fingerprint.json").write_text(json.dumps(teacher.fingerprint()))
    print(f"{len(keys)} keys of {args.teacher} -> {bench / 'teacher-keys.npy'}")


def train(args, out: Path) -> None:
    import numpy as np
    import torch

    from copydistill import cli
    from copydistill.train import run

    bench = args.bench
    keys = np.load(bench / "teacher-keys.npy")
    fingerprint = json.loads((bench / "teacher-fingerprint.json").read_text())
    run.load_teacher = lambda spec, threads=None: _KeysOnlyTeacher(fingerprint)
    run.image_teacher_keys = lambda folder, teacher, cache_dir, progress=True: keys
    cuda = torch.cuda.is_available() and not args.dry_run
    run_dir = Path(args.run_dir)
    # max_steps sized by --steps (the device script sets ~5 min of steps from the kd section's rate)
    overrides = [f"train_images={bench / 'images' / 'train'}", f"out_dir={run_dir}", "kd_target=clean",
                 "cached_views=0", f"augment_device={'gpu' if cuda else 'cpu'}", f"workers={args.workers}",
                 f"max_steps={args.steps}", "epochs=100000", "export=[]",
                 f"precision={'bf16-mixed' if cuda else '32-true'}", f"channels_last={'true' if cuda else 'false'}",
                 f"accelerator={'gpu' if cuda else 'cpu'}", "devices=1", "log_every_n_steps=50",
                 f"batch_size={args.batch}"]
    start = time.perf_counter()
    rc = cli.main(["train", "--config", "configs/quickstart.yaml", *overrides])
    train_s = time.perf_counter() - start
    eval_dir = run_dir / "eval"
    start = time.perf_counter()
    rc2 = cli.main(["eval", "disc", "--data", str(bench), "--model", f"ckpt:{run_dir}/final/student.pt",
                    "--resize", "short:160", "--out", str(eval_dir), "--no-report"]
                   + (["--accelerator", "gpu"] if cuda else []))
    eval_s = time.perf_counter() - start
    metrics = {}
    for f in sorted(eval_dir.glob("*.json")):
        try:
            metrics[f.name] = json.loads(f.read_text())
        except ValueError:
            pass
    _write(out, "train", dict(command="copydistill train --config configs/quickstart.yaml " + " ".join(overrides),
                              rc_train=rc, rc_eval=rc2, train_s=train_s, eval_s=eval_s, steps=args.steps,
                              device="cuda" if cuda else "cpu", cpu_recipe_reference="README: quickstart KD "
                              "0.350 (seed 0) / 0.434 (seed 1) µAP", eval=metrics))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section", choices=["prepare", "kd", "embed", "train"])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/device-check")))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny images, a few steps")
    p.add_argument("--images", type=Path, help="JPEG folder (default: procedural JPEGs)")
    p.add_argument("--bench", type=Path, help="real-photo benchmark folder (prepare, train)")
    p.add_argument("--teacher", default="sscd-int8", help="prepare: teacher spec")
    p.add_argument("--teacher-weights", default=os.environ.get("SSCD_TORCHVISION"))
    p.add_argument("--students", nargs="+", default=["mobilenet_v3_large_seed", "resnet18"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bank", type=int, default=65_536)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0, help="kd: seconds per row")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=10**9)
    p.add_argument("--steps", type=int, default=6000, help="train: max_steps")
    p.add_argument("--resize", default="short:288")
    p.add_argument("--run-dir", default="/tmp/device-check-run")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.section in ("kd", "embed") and args.images is None:
        n, side = (24, (96, 160)) if args.dry_run else (2048, (480, 640))
        args.images = _jpegs(Path(tempfile.mkdtemp(prefix="jpegs-")), n, side)
    {"prepare": prepare, "kd": kd, "embed": embed, "train": train}[args.section](args, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
