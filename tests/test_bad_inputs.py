"""Bad inputs and misuse, as a new user would try them (issue 12): every case must end in exit
code 2 with a one-line ``copydistill`` message and no traceback, and leave finished outputs intact.

Commands run in-process through ``copydistill.cli.main`` (pHash, the tiny benchmark); the cases
that need a second process (two writers at once, ``kill -9``) run the CLI as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import copydistill
from copydistill.cli import main
from copydistill.io.lock import folder_lock
from copydistill.search.index import load_index

SRC = str(Path(copydistill.__file__).resolve().parents[1])


def run(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``copydistill ARGV`` run in-process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv, match: str | None = None) -> str:
    """Run ``argv``; assert exit code 2 and one ``copydistill`` error line; return that line."""
    code, out, err = run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert len(lines) == 1 and lines[0].startswith("copydistill"), err
    assert ": error: " in lines[0], err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def cli_process(*argv, stderr=subprocess.PIPE) -> subprocess.Popen:
    """``copydistill ARGV`` as a subprocess running this source tree."""
    env = os.environ | {"PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "copydistill.cli", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


@pytest.fixture(scope="session")
def bench(tiny_benchmark) -> Path:
    return Path(tiny_benchmark)


@pytest.fixture
def built(bench, tmp_path, capsys) -> Path:
    """A fresh pHash index of the tiny benchmark's references."""
    out = tmp_path / "I"
    code, _, err = run(capsys, "index", "build", bench / "images" / "references", "--model", "phash",
                       "--out", out, "--quiet")
    assert code == 0, err
    return out


def _image_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".jpg"}


# --------------------------------------------------------------------------------------------
# one writer per index
# --------------------------------------------------------------------------------------------


def test_two_concurrent_adds_keep_both_folders(bench, built, tmp_path):
    """Two ``index add`` at once: the second waits for the first (naming it), both land."""
    logs = [tmp_path / "add-train.err", tmp_path / "add-queries.err"]
    folders = [bench / "images" / "train", bench / "images" / "dev_queries"]
    with folder_lock(built):  # hold the index so both runs must wait: the race, made certain
        procs = []
        for folder, log in zip(folders, logs, strict=True):
            with open(log, "w") as handle:
                procs.append(cli_process("index", "add", built, folder, "--quiet", stderr=handle))
        deadline = time.monotonic() + 120
        while not all("waiting" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            time.sleep(0.2)
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=120) == 0, log.read_text()
        assert "is being written by pid" in log.read_text()
    index = load_index(built)
    names = {Path(p).name for p in index.paths}
    expected = set()
    for folder in [bench / "images" / "references", *folders]:
        expected |= _image_names(folder)
    assert names == expected and len(index) == len(expected) == index.info.count
    assert not (built / "embed-cache").exists()


# --------------------------------------------------------------------------------------------
# numbers and policies: refused at parse time, before any model is loaded
# --------------------------------------------------------------------------------------------

PARSE_CASES = [
    ("embed --model phash --images {T} --out {o} --batch-size -1", "--batch-size: -1"),
    ("embed --model phash --images {T} --out {o} --batch-size 0", "--batch-size: 0"),
    ("embed --model phash --images {T} --out {o} --batch-size x", "--batch-size: 'x'"),
    ("embed --model phash --images {T} --out {o} --threads 0", "--threads: 0"),
    ("embed --model phash --images {T} --out {o} --resize square:99999", "8192"),
    ("embed --model phash --images {T} --out {o} --resize bogus", "'bogus'"),
    ("embed --model phash --images {T} --out {o} --devices 0", "--devices: 0"),
    ("index build {R} --model phash --out {o} --batch-size -1", "--batch-size: -1"),
    ("index build {R} --model phash --out {o} --nprobe 0", "--nprobe: 0"),
    ("index build {R} --model phash --out {o} --train-size -3", "--train-size: -3"),
    ("index search {I} {Q} --k 0", "--k: 0"),
    ("index search {I} {Q} --k -5", "--k: -5"),
    ("index search {I} {Q} --threshold 2", "--threshold: 2"),
    ("index search {I} {Q} --threshold -5", "--threshold: -5"),
    ("index search {I} {Q} --threshold nan", "--threshold: nan"),
    ("index search {I} {Q} --threshold often", "'often'"),
    ("index search {I} {Q} --nprobe -1", "--nprobe: -1"),
    ("dedup {T} --model phash --threshold 1.5", "--threshold: 1.5"),
    ("eval disc --data {B} --model phash --out {o} --k -5", "--k: -5"),
    ("eval disc --data {B} --model phash --out {o} --k 0", "--k: 0"),
    ("eval disc --data {B} --model phash --out {o} --codec-dims 0", "--codec-dims: 0"),
    ("calibrate --data {B} --model phash --k 0", "--k: 0"),
    ("data make-benchmark --size tiny --seed -1 --out {o}", "--seed: -1"),
    ("data make-benchmark --size tiny --workers 0 --out {o}", "--workers: 0"),
    ("augment preview --out {o}/x.png --count 0", "--count: 0"),
    ("export --model resnet18 --out {o}/x.onnx --resize square:0", "square:0"),
    ("embed --model phash --images {T} --out {o} --no-such-option", "--no-such-option"),
]


@pytest.mark.parametrize("template, message", PARSE_CASES, ids=[c[0].split(" --")[0] + c[1] for c in PARSE_CASES])
def test_bad_numbers_are_refused_at_parse_time(bench, built, tmp_path, capsys, template, message):
    images = bench / "images"
    argv = template.format(T=images / "train", R=images / "references", Q=images / "dev_queries",
                           I=built, B=bench, o=tmp_path / "out").split()
    refused(capsys, *argv, match=message)
    assert not (tmp_path / "out").exists()  # nothing written


MODEL_CASES = [
    ("resnet18:dims=abc", "dims='abc'"),
    ("resnet18:dims=0", "dims='0'"),
    ("resnet18:seed=-1", "seed='-1'"),
    ("resnet18:kd_dim=x", "kd_dim='x'"),
    ("resnet18:depth=3", "unknown option"),
    ("nosuchmodel", "not understood"),
    ("onnx:", "needs a file path"),
    ("onnx:/no/such/file.onnx", "not found"),
]


@pytest.mark.parametrize("spec, message", MODEL_CASES)
def test_bad_model_specs(bench, tmp_path, capsys, spec, message):
    refused(capsys, "embed", "--model", spec, "--images", bench / "images" / "train",
            "--out", tmp_path / "out", match=message)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# training: every config value checked when the config is loaded; out_dir and --resume safety
# --------------------------------------------------------------------------------------------

CONFIG_CASES = [
    ("export=[pdf]", "'pdf' not known"),
    ("export=onnx,pdf", "'pdf' not known"),
    ("val_resize=bogus", "val_resize"),
    ("epochs=-1", "epochs=-1"),
    ("epochs=0", "epochs=0"),
    ("absolute_lr=-5", "absolute_lr=-5"),
    ("base_lr=0", "base_lr=0"),
    ("image_size=0", "image_size=0"),
    ("dims=0", "dims=0"),
    ("dims=abc", "dims='abc'"),
    ("batch_size=1", "batch_size"),
    ("weight_decay=-1", "weight_decay"),
    ("momentum=2", "momentum"),
    ("max_steps=0", "max_steps=0"),
    ("seed=-1", "seed=-1"),
    ("precision=fp8", "precision"),
    ("devices=0,1", "devices"),
    ("workers=-2", "workers"),
    ("no_such_option=1", "unknown option"),
]


@pytest.mark.parametrize("override, message", CONFIG_CASES)
def test_bad_config_values_are_refused_before_any_work(bench, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    refused(capsys, "train", f"train_images={bench / 'images' / 'train'}", f"out_dir={out}", override,
            match=message)
    assert not out.exists()  # no config.yaml, no logs: nothing started


def _fake_run(out: Path, **config) -> Path:
    """An out_dir as a finished tiny run leaves it: config.yaml and checkpoints/last.ckpt."""
    import dataclasses

    import torch

    from copydistill.config import TrainConfig, dump_config

    cfg = TrainConfig(**config)
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    torch.save({"state_dict": {"student.w": torch.zeros(2)},
                "hyper_parameters": {"config": dataclasses.asdict(cfg)}}, out / "checkpoints" / "last.ckpt")
    return out


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change", ["dims=128", "train_images=OTHER"])
def test_a_new_run_into_another_runs_out_dir_is_refused(bench, tmp_path, capsys, change):
    images = bench / "images"
    out = _fake_run(tmp_path / "D", train_images=str(images / "train"), dims=64)
    before = _listing(out)
    change = change.replace("OTHER", str(images / "references"))
    line = refused(capsys, "train", f"train_images={images / 'train'}", "dims=64", f"out_dir={out}",
                   change, match="holds another training run")
    assert "--resume" in line and "fresh out_dir" in line and change.split("=")[0] in line
    assert _listing(out) == before  # config.yaml not rewritten


def test_resume_from_bad_files_names_the_file(bench, tmp_path, capsys):
    images = bench / "images"
    good = _fake_run(tmp_path / "good", train_images=str(images / "train"))
    data = (good / "checkpoints" / "last.ckpt").read_bytes()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    import torch

    files = {"missing.ckpt": None, "random.ckpt": os.urandom(4096), "truncated.ckpt": data[: len(data) // 2],
             "empty.ckpt": b""}
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    expected = {"missing.ckpt": "not found", "random.ckpt": "not a PyTorch weights file",
                "truncated.ckpt": "not a PyTorch weights file", "empty.ckpt": "not a PyTorch weights file",
                "evil.ckpt": "could run code"}
    for name, message in expected.items():
        out = tmp_path / f"run-{name}"
        line = refused(capsys, "train", f"train_images={images / 'train'}", f"out_dir={out}",
                       "--resume", tmp_path / name, match=message)
        assert str(tmp_path / name) in line and "weights_only=False" not in line
        assert not out.exists()
    assert not (tmp_path / "PWNED").exists()
    # a real checkpoint of another model is refused too, naming what differs
    line = refused(capsys, "train", f"train_images={images / 'train'}", "dims=16",
                   f"out_dir={tmp_path / 'run'}", "--resume", good / "checkpoints" / "last.ckpt",
                   match="differs")
    assert "dims" in line
