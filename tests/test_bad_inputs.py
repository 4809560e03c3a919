"""Bad inputs and misuse, as a new user would try them (issue 12): every case must end in exit
code 2 with a one-line ``copydistill`` message and no traceback, and leave finished outputs intact.

Commands run in-process through ``copydistill.cli.main`` (pHash, the tiny benchmark); the cases
that need a second process (two writers at once, ``kill -9``) run the CLI as a subprocess.
"""

from __future__ import annotations

import os
import re
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
from copydistill.io.images import list_images
from copydistill.io.lock import folder_lock
from copydistill.search.store import load_index

SRC = str(Path(copydistill.__file__).resolve().parents[1])
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # tqdm's (its \r reads back as a line break)


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
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
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
    return {p.name for p in list_images(folder)}


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


def test_a_second_embed_into_the_same_folder_waits(bench, tmp_path):
    out = tmp_path / "E"
    log = tmp_path / "embed.err"
    with folder_lock(out):
        with open(log, "w") as handle:
            proc = cli_process("embed", "--model", "phash", "--images", bench / "images" / "train",
                               "--out", out, stderr=handle)
        deadline = time.monotonic() + 120
        while "waiting" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert not (out / "embeddings.npz").exists()
    assert proc.wait(timeout=120) == 0, log.read_text()
    with np.load(out / "embeddings.npz") as data:
        assert len(data["ids"]) == len(list_images(bench / "images" / "train"))


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
    ("arch=resnet9000", "arch='resnet9000'"),
    ("arch=timm/no_such_net", "timm has no such model"),
    ("accelerator=quantum", "accelerator"),
]


@pytest.mark.parametrize("override, message", CONFIG_CASES)
def test_bad_config_values_are_refused_before_any_work(bench, tmp_path, capsys, override, message):
    out = tmp_path / "run"
    refused(capsys, "train", f"train_images={bench / 'images' / 'train'}", f"out_dir={out}", override,
            match=message)
    assert not out.exists()  # no config.yaml, no logs: nothing started


def _fake_run(out: Path, **config) -> Path:
    """An out_dir as a finished tiny run leaves it: config.yaml and checkpoints/last.ckpt."""
    import torch

    from copydistill.config import config_from_dict, dump_config, to_flat

    cfg = config_from_dict(config)
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    torch.save({"state_dict": {"student.w": torch.zeros(2)},
                "hyper_parameters": {"config": to_flat(cfg)}}, out / "checkpoints" / "last.ckpt")
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


# --------------------------------------------------------------------------------------------
# kill -9 during embed: the next run resumes and the output is identical
# --------------------------------------------------------------------------------------------

SLOW_RUNNER = """
import sys, time
from copydistill.models.phash import PHashDescriptor
embed_pixels = PHashDescriptor.embed_pixels
def slow(self, pixels):  # pHash made slow enough (1 s per 64-image part) for the kill to land
    time.sleep(1.0)
    return embed_pixels(self, pixels)
PHashDescriptor.embed_pixels = slow
from copydistill.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="session")
def many_images(bench, tmp_path_factory) -> Path:
    """150 images (the tiny benchmark's 90, and 60 of them again under other names)."""
    folder = tmp_path_factory.mktemp("many") / "images"
    folder.mkdir()
    sources = list_images(bench / "images")
    for i in range(150):
        source = sources[i % len(sources)]
        shutil.copy(source, folder / f"img{i:03d}{source.suffix}")
    return folder


def test_kill_9_during_embed_resumes_with_identical_output(many_images, tmp_path, capsys):
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_RUNNER)
    out = tmp_path / "killed"
    env = os.environ | {"PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, str(script), "embed", "--model", "phash", "--images", str(many_images),
            "--out", str(out)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.npz")):  # the first 64 images are saved
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "embeddings.npz").exists()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resuming an interrupted run: 64 of 150" in again.stderr
    code, _, err = run(capsys, "embed", "--model", "phash", "--images", many_images,
                       "--out", tmp_path / "straight")
    assert code == 0, err
    with np.load(out / "embeddings.npz") as a, np.load(tmp_path / "straight" / "embeddings.npz") as b:
        assert list(a["ids"]) == list(b["ids"]) and len(a["ids"]) == 150
        np.testing.assert_array_equal(a["vectors"], b["vectors"])
        assert [Path(p).name for p in a["paths"]] == [Path(p).name for p in b["paths"]]
    assert not list(out.glob("part-*.npz"))


# --------------------------------------------------------------------------------------------
# memory guard on the resized size
# --------------------------------------------------------------------------------------------


def test_a_thin_strip_is_skipped_not_blown_up(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "strip"
    folder.mkdir()
    Image.new("RGB", (200, 1)).save(folder / "strip.png", optimize=True)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "normal.png")
    assert (folder / "strip.png").stat().st_size < 100
    start = time.monotonic()
    code, out, err = run(capsys, "embed", "--model", "resnet18:dims=8", "--images", folder,
                         "--out", tmp_path / "E")
    assert code == 0, err
    assert time.monotonic() - start < 30  # 57600x288 through a ResNet would take minutes
    assert "1 images embedded" in out and "1 file(s) or folder(s) skipped" in out
    line = (tmp_path / "E" / "skipped.tsv").read_text()
    assert "strip.png" in line and "too large once resized" in line and "200:1" in line
    refused(capsys, "embed", "--model", "phash", "--images", folder, "--out", tmp_path / "F",
            "--resize", "square:99999", match="8192")
    # under a square policy the same strip is fine
    code, out, _ = run(capsys, "embed", "--model", "resnet18:dims=8", "--resize", "square:64",
                       "--images", folder, "--out", tmp_path / "G")
    assert code == 0 and "2 images embedded" in out


# --------------------------------------------------------------------------------------------
# damaged index folders, missing inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    ("[]", "not an object"),
    ("{}", "format"),
    ("not json", "unreadable index description"),
    ("DROP_DIMS", "fingerprint.dims"),
])
@pytest.mark.parametrize("command", ["info", "search", "add"])
def test_a_damaged_model_json(bench, built, capsys, content, message, command):
    import json

    meta = built / "model.json"
    if content == "DROP_DIMS":
        payload = json.loads(meta.read_text())
        del payload["fingerprint"]["dims"]
        content = json.dumps(payload)
    meta.write_text(content)
    argv = {"info": ["index", "info", built],
            "search": ["index", "search", built, bench / "images" / "dev_queries"],
            "add": ["index", "add", built, bench / "images" / "train"]}[command]
    refused(capsys, *argv, match=message)


def test_missing_and_odd_inputs(bench, built, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, "embed", "--model", "phash", "--images", empty, "--out", tmp_path / "E",
            match="no images found")
    assert not (tmp_path / "E").exists()
    refused(capsys, "index", "build", empty, "--model", "phash", "--out", tmp_path / "I2",
            match="no images found")
    refused(capsys, "dedup", empty, "--model", "phash", "--threshold", "0.9", match="no images found")
    refused(capsys, "embed", "--model", "phash", "--images", tmp_path / "nope", "--out", tmp_path / "E",
            match="not a folder")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    refused(capsys, "index", "search", built, tmp_path / "loop1", match="symbolic link")
    refused(capsys, "index", "search", built, tmp_path / "absent.jpg", match="not found")
    refused(capsys, "index", "info", tmp_path / "no-index", match="not found")
    refused(capsys, "index", "search", empty, bench / "images" / "dev_queries", match="not a copydistill index")
    refused(capsys, "eval", "disc", "--data", empty, "--model", "phash", "--out", tmp_path / "D")
    refused(capsys, "train", "--config", tmp_path / "missing.yaml", match="missing.yaml")
    refused(capsys, "train", f"out_dir={tmp_path / 'T'}", match="train_images")
    refused(capsys, "augment", "preview", "--images", empty, "--out", tmp_path / "p.png",
            match="no images found")
    refused(capsys, "eval", "disc", "--data", bench, "--model", "phash", "--model", "phash",
            "--out", tmp_path / "D2", match="given twice")
    refused(capsys, "index", "build", bench / "images" / "references", "--model", "phash",
            "--out", built, match="already holds an index")
    refused(capsys, "index", "build", bench / "images" / "references", "--model", "phash",
            "--out", bench / "images" / "references" / "inside", match="inside the reference folder")
    refused(capsys, "index", "add", built, bench / "images" / "train", "--model", "resnet18",
            match="not comparable")
    refused(capsys, "index", "build", bench / "images" / "references", "--model", "phash",
            "--out", tmp_path / "I3", "--index-factory", "Bogus", match="not a FAISS factory")
    assert not (tmp_path / "I3" / "model.json").exists()


# --------------------------------------------------------------------------------------------
# OS errors: read-only, disk full, a file where a folder should be
# --------------------------------------------------------------------------------------------


def _fail_writes_under(monkeypatch, folder: Path, err: int, name_prefix: str = "") -> None:
    """Make the filesystem refuse writes into ``folder`` (as a read-only mount or a full disk)."""
    import errno as errno_module
    import pathlib
    import tempfile

    real_mkdir, real_mkstemp, real_replace = pathlib.Path.mkdir, tempfile.mkstemp, os.replace
    message = os.strerror(err)

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(folder.resolve())

    def mkdir(self, *args, **kwargs):
        if inside(self) and not self.exists() and err == errno_module.EROFS:
            raise OSError(err, message, str(self))
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir) and err == errno_module.EROFS:
            raise OSError(err, message, str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def replace(src, dst):
        if inside(dst) and Path(dst).name.startswith(name_prefix):
            raise OSError(err, message, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)


def test_read_only_outputs(bench, tmp_path, capsys, monkeypatch):
    import errno

    ro = tmp_path / "ro"
    _fail_writes_under(monkeypatch, ro, errno.EROFS)
    images = bench / "images"
    cases = [
        ["embed", "--model", "phash", "--images", images / "train", "--out", ro / "E"],
        ["dedup", images / "train", "--model", "phash", "--threshold", "0.9", "--cache", ro / "C"],
        ["data", "make-benchmark", "--size", "tiny", "--out", ro / "B"],
        ["eval", "disc", "--data", bench, "--model", "phash", "--out", ro / "D"],
        ["index", "build", images / "references", "--model", "phash", "--out", ro / "I"],
        ["index", "search", tmp_path / "x", images / "dev_queries", "--out", ro / "r.json"],
    ]
    for argv in cases:
        line = refused(capsys, *argv)
        assert "Read-only file system" in line or "not a copydistill index" in line or "not found" in line
    assert not ro.exists()
    line = refused(capsys, "embed", "--model", "phash", "--images", images / "train",
                   "--out", bench / "benchmark.json")
    assert "is a file" in line


def test_disk_full_while_adding_keeps_the_index(bench, built, capsys, monkeypatch):
    import errno

    before = load_index(built)
    _fail_writes_under(monkeypatch, built, errno.ENOSPC, name_prefix="index-")
    line = refused(capsys, "index", "add", built, bench / "images" / "train", "--quiet",
                   match="No space left on device")
    assert "index-0002.faiss" in line and "writable --out" not in line
    monkeypatch.undo()
    after = load_index(built)  # the previous generation, complete
    assert len(after) == len(before) and after.info.generation == 1
    assert not list(built.glob("index-0002*")) and not list(built.glob(".*.tmp"))
    code, out, err = run(capsys, "index", "add", built, bench / "images" / "train", "--quiet")
    added = len(list_images(bench / "images" / "train"))
    assert code == 0 and len(load_index(built)) == len(before) + added, err


def test_disk_full_while_embedding(bench, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "E"
    _fail_writes_under(monkeypatch, out, errno.ENOSPC, name_prefix="embeddings")
    line = refused(capsys, "embed", "--model", "phash", "--images", bench / "images" / "train",
                   "--out", out, match="No space left on device")
    assert "embeddings.npz" in line
    assert not (out / "embeddings.npz").exists() and not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------
# skip lists, unreadable files and folders, one id rule
# --------------------------------------------------------------------------------------------


@pytest.fixture
def messy(bench, tmp_path) -> Path:
    """Good images in two sub-folders with the same names, corrupt files named with a tab and a
    newline, and a sub-folder ``secret`` that cannot be listed (simulated: tests may run as root)."""
    folder = tmp_path / "messy"
    train = list_images(bench / "images" / "train")
    for sub, source in (("2024", train[0]), ("2025", train[1])):
        (folder / sub).mkdir(parents=True)
        shutil.copy(source, folder / sub / "IMG_0001.jpg")  # the bytes decide, not the name
    shutil.copy(train[2], folder / "2025" / "IMG_0002.bmp")
    (folder / "secret").mkdir()
    shutil.copy(train[3], folder / "secret" / "hidden.jpg")
    (folder / "bad\tname.jpg").write_bytes(b"not a jpeg")
    (folder / "bad\nname.jpg").write_bytes(b"not a jpeg either")
    return folder


@pytest.fixture
def unlistable(messy, monkeypatch):
    import errno

    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and Path(path).name == "secret":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", lambda path=".": list(scandir(path)))
    return messy


def test_an_unlistable_folder_given_itself_is_refused(unlistable, capsys):
    refused(capsys, "embed", "--model", "phash", "--images", unlistable / "secret", "--out",
            unlistable.parent / "E", match="cannot list the folder (Permission denied)")
    refused(capsys, "index", "build", unlistable / "secret", "--model", "phash", "--out",
            unlistable.parent / "I", match="cannot list the folder")


def _skip_rows(path: Path) -> dict[str, str]:
    import csv

    with open(path, newline="") as handle:
        return {row[0]: row[1] for row in csv.reader(handle, delimiter="\t")}


def test_skip_lists_name_real_files_and_unreadable_folders(unlistable, tmp_path, capsys):
    messy = unlistable
    expected = {"bad\tname.jpg": "not an image", "bad\nname.jpg": "not an image",
                "secret": "unreadable folder"}
    code, out, err = run(capsys, "embed", "--model", "phash", "--images", messy, "--out", tmp_path / "E")
    assert code == 0, err
    assert "3 images embedded" in out and "3 file(s) or folder(s) skipped" in out
    code, out, err = run(capsys, "index", "build", messy, "--model", "phash", "--out", tmp_path / "I",
                         "--quiet")
    assert code == 0 and "3 file(s) skipped" in out, err
    code, out, err = run(capsys, "dedup", messy, "--model", "phash", "--threshold", "0.99", "--json",
                         "--quiet", "--cache", tmp_path / "C")
    assert code == 0, err
    import json

    dedup_skipped = {s["path"]: s["reason"] for s in json.loads(out)["skipped"]}
    for rows in (_skip_rows(tmp_path / "E" / "skipped.tsv"), _skip_rows(tmp_path / "I" / "skipped.tsv"),
                 dedup_skipped):
        assert len(rows) == 3
        for path, reason in rows.items():
            assert Path(path).exists()  # every row names a real file or folder
            name = Path(path).name
            assert reason.startswith(expected[name]) and "truncated" not in reason
    assert "\n" not in err.strip()  # the dedup warning stays on one line


def test_one_id_rule_for_embed_index_and_dedup(messy, tmp_path, capsys):
    ids = {"2024/IMG_0001.jpg", "2025/IMG_0001.jpg", "2025/IMG_0002.bmp", "secret/hidden.jpg"}
    code, _, err = run(capsys, "embed", "--model", "phash", "--images", messy, "--out", tmp_path / "E")
    assert code == 0, err
    with np.load(tmp_path / "E" / "embeddings.npz") as data:
        assert set(data["ids"]) == ids
    code, _, err = run(capsys, "index", "build", messy, "--model", "phash", "--out", tmp_path / "I",
                       "--quiet")
    assert code == 0, err
    assert set(load_index(tmp_path / "I").ids) == ids
    code, _, err = run(capsys, "embed", "--model", "phash", "--images", messy, "--out", tmp_path / "H",
                       "--hdf5", tmp_path / "d.hdf5")
    assert code == 0, err


def test_unreadable_file_is_not_called_corrupt(messy, tmp_path, monkeypatch):
    import builtins
    import errno

    from copydistill.errors import UnreadableFileError
    from copydistill.io.images import load_image

    target = messy / "2024" / "IMG_0001.jpg"
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if Path(str(path)) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(UnreadableFileError, match="Permission denied") as info:
        load_image(target)
    assert "corrupt" not in str(info.value)


def test_export_files_are_not_owner_only(tmp_path, capsys):
    import stat

    from copydistill.io.atomic import FILE_MODE

    code, _, err = run(capsys, "export", "--model", "resnet18:dims=8", "--format", "torchscript",
                       "--out", tmp_path / "m.pt", "--resize", "square:32")
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == FILE_MODE


def test_a_ground_truth_of_another_dataset_is_refused_before_embedding(bench, tmp_path, capsys):
    gt = tmp_path / "gt.csv"
    gt.write_text("query_id,reference_id\nQ99999,R999999\n")
    refused(capsys, "eval", "disc", "--data", bench, "--model", "phash", "--out", tmp_path / "D",
            "--ground-truth", gt, match="none of its 1 pairs")
    assert not (tmp_path / "D" / "embeddings").exists()
