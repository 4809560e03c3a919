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
