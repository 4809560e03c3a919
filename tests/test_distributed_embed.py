"""Data-parallel embedding (copydistill.eval.distributed_embed) against ``embed_records``.

The descriptor is a random-init ResNet-18 (64-d) on 48 px squares; ``CHUNK`` is 4, so the 11
images (one undecodable) make 3 chunks: ranks 0 and 1 of a 2-process run get 2 and 1. In-process
runs use one Lightning device; 2-process runs go through the CLI in a subprocess, because
Lightning's DDP launcher starts the other rank by re-running the command line (here a small
script that sets ``CHUNK`` and calls ``copydistill.cli.main``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from copydistill.cli import main
from copydistill.data.disc import disc_records
from copydistill.data.procedural import procedural_image
from copydistill.errors import CopydistillError, ImageError
from copydistill.io import embeddings as store
from copydistill.eval.distributed_embed import embed_records_distributed, rank_chunks
from copydistill.eval.embed import embed_records
from copydistill.io.embeddings import Embeddings
from copydistill.io.records import folder_records
from copydistill.models.registry import load_descriptor

SPEC, RESIZE, CHUNK, WINDOW = "resnet18:dims=64,seed=0", "square:48", 4, 2
RUNNER = f"""
import sys
from copydistill.eval import embed
from copydistill.io import embeddings
embeddings.CHUNK = int(sys.argv[1])
embed.CPU_WINDOW_CHUNKS = {WINDOW}
from copydistill.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _descriptor():
    return load_descriptor(SPEC, resize=RESIZE)


@pytest.fixture
def images(tmp_path):
    """img00..img09 and an undecodable img04_bad (record 5, in the chunk at image 4)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(10):
        procedural_image(300 + i, long_side=(40, 72)).save(folder / f"img{i:02d}.jpg", quality=90)
    (folder / "img04_bad.jpg").write_bytes(b"not an image" * 8)
    assert disc_records(folder)[5].path.name == "img04_bad.jpg"
    return folder


@pytest.fixture
def small_chunks(monkeypatch):
    import copydistill.eval.embed as embed

    monkeypatch.setattr(store, "CHUNK", CHUNK)
    monkeypatch.setattr(embed, "CPU_WINDOW_CHUNKS", WINDOW)  # 11 images: windows [0, 4] and [8]


@pytest.fixture
def reference(images, small_chunks, tmp_path):
    """The single-process result and its cache folder."""
    out = tmp_path / "single"
    return embed_records(_descriptor(), disc_records(images), out, progress=False), out


@pytest.fixture
def cli_reference(images, small_chunks, tmp_path):
    """The single-process result for the ids ``copydistill embed`` uses (paths relative to the folder)."""
    out = tmp_path / "single-cli"
    return embed_records(_descriptor(), folder_records(images), out, progress=False), out


def _assert_same(result: Embeddings, out, expected: Embeddings, expected_out) -> None:
    assert result.ids == expected.ids
    assert result.paths == expected.paths
    np.testing.assert_array_equal(result.vectors, expected.vectors)
    for name in ("skipped.tsv", "meta.json"):
        assert (out / name).read_text() == (expected_out / name).read_text()
    assert not list(out.glob("part-*.npz"))


def _killed_run(records, out) -> None:
    """A single-process run stopped (Ctrl-C) while embedding its second window (the chunk at 8):
    parts 0 and 4 (the first window) exist."""
    killed = _descriptor()
    embed_pixels, calls = killed.embed_pixels, []

    def interrupt_on_third(pixels):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return embed_pixels(pixels)

    killed.embed_pixels = interrupt_on_third
    with pytest.raises(KeyboardInterrupt):
        embed_records(killed, records, out, progress=False)
    assert sorted(p.name for p in out.glob("part-*.npz")) == ["part-000000000.npz", "part-000000004.npz"]


def _run_two_processes(tmp_path, chunk: int, *args: str) -> subprocess.CompletedProcess:
    """``copydistill ARGS --devices 2 --accelerator cpu`` with ``CHUNK = chunk`` in every rank."""
    script = tmp_path / "run_copydistill.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK",
                                                        "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, str(script), str(chunk), *args, "--devices", "2", "--accelerator", "cpu"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def _embed_two_processes(images, out, *extra: str) -> subprocess.CompletedProcess:
    return _run_two_processes(out.parent, CHUNK, "embed", "--model", SPEC, "--resize", RESIZE,
                              "--images", str(images), "--out", str(out), *extra)


# --------------------------------------------------------------------------------------------
# Sharding and one Lightning device (in process)
# --------------------------------------------------------------------------------------------


def test_rank_chunks_are_disjoint_and_cover_every_chunk(small_chunks):
    assert rank_chunks(11, 0, 2) == [0, 4] and rank_chunks(11, 1, 2) == [8]  # by window
    shards = [rank_chunks(1001, rank, 3) for rank in range(3)]
    assert sorted(s for shard in shards for s in shard) == list(range(0, 1001, CHUNK))
    assert rank_chunks(4, 1, 2) == []  # more ranks than chunks: nothing, not a padded duplicate


def test_one_lightning_device_matches_embed_records(images, reference, tmp_path):
    expected, expected_out = reference
    descriptor = _descriptor()
    out = tmp_path / "lightning"
    result = embed_records_distributed(descriptor, disc_records(images), out, progress=False,
                                       accelerator="cpu", devices=1)
    _assert_same(result, out, expected, expected_out)
    assert descriptor.device == torch.device("cpu") and not descriptor.module.training
    # a finished folder is returned as it is, before any Trainer runs
    untouched = _descriptor()
    untouched.embed_pixels = lambda pixels: pytest.fail("a finished folder was recomputed")
    again = embed_records_distributed(untouched, disc_records(images), out, progress=False,
                                      accelerator="cpu", devices=1)
    np.testing.assert_array_equal(again.vectors, expected.vectors)


def test_resumes_from_the_parts_of_a_killed_run(images, reference, tmp_path):
    expected, expected_out = reference
    records = disc_records(images)
    out = tmp_path / "resumed"
    _killed_run(records, out)

    resumed = _descriptor()
    embedded: list[int] = []
    resumed_pixels = resumed.embed_pixels
    resumed.embed_pixels = lambda pixels: embedded.append(len(pixels)) or resumed_pixels(pixels)
    result = embed_records_distributed(resumed, records, out, progress=False, accelerator="cpu", devices=1)
    assert embedded == [3]  # only the chunk at image 8
    _assert_same(result, out, expected, expected_out)


def test_fail_mode_raises_the_typed_error_and_keeps_finished_parts(images, small_chunks, tmp_path):
    out = tmp_path / "fail"
    with pytest.raises(ImageError) as info:
        embed_records_distributed(_descriptor(), disc_records(images), out, on_error="fail",
                                  progress=False, accelerator="cpu", devices=1)
    assert info.value.path.name == "img04_bad.jpg"
    assert [p.name for p in out.glob("part-*.npz")] == ["part-000000000.npz"]
    assert not (out / "embeddings.npz").exists()


@pytest.mark.parametrize(
    "options, message",
    [(["--devices", "0"], "--devices: 0"), (["--num-nodes", "0"], "--num-nodes: 0")]
    + ([] if torch.cuda.is_available() else [(["--accelerator", "gpu"], "no CUDA GPU")]),
)
def test_bad_parallel_options_are_clear_errors(images, tmp_path, capsys, options, message):
    code = main(["embed", "--model", "phash", "--images", str(images), "--out", str(tmp_path / "o"), *options])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_launcher_world_size_that_disagrees_with_the_options_is_an_error(images, tmp_path, monkeypatch):
    """torchrun with 2 processes but --devices 1 would make two full copies racing on one folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CopydistillError, match="WORLD_SIZE.*--devices 1"):
        embed_records_distributed(_descriptor(), disc_records(images), tmp_path / "o",
                                  accelerator="cpu", devices=1)


# --------------------------------------------------------------------------------------------
# Two CPU processes (Lightning DDP, gloo), through the CLI
# --------------------------------------------------------------------------------------------


def test_two_processes_match_embed_records(images, cli_reference, tmp_path):
    expected, expected_out = cli_reference
    out = tmp_path / "ddp"
    run = _embed_two_processes(images, out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "10 images embedded (64 dims)" in run.stdout
    _assert_same(Embeddings.load(out / "embeddings.npz"), out, expected, expected_out)


def test_two_processes_evaluate_disc_as_one(tiny_benchmark, tmp_path, monkeypatch):
    """``eval disc``: three splits and two models (torch and pHash) in one DDP job; with 32-image
    chunks rank 1 has nothing to embed for the queries and references, and half the train split."""
    monkeypatch.setattr(store, "CHUNK", 32)
    args = ["eval", "disc", "--data", str(tiny_benchmark), "--model", SPEC, "--model", "phash",
            "--resize", RESIZE, "--no-report"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    run = _run_two_processes(tmp_path, 32, *args, "--out", str(tmp_path / "ddp"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "phash" in run.stdout and "uAP_SN" in run.stdout
    for model in ("resnet18_dims=64,seed=0", "phash"):
        single, ddp = tmp_path / "single" / model, tmp_path / "ddp" / model
        assert (ddp / "disc_metrics.csv").read_text() == (single / "disc_metrics.csv").read_text()
        for split in ("queries", "references", "train"):
            expected = Embeddings.load(single / "embeddings" / split / "embeddings.npz")
            result = Embeddings.load(ddp / "embeddings" / split / "embeddings.npz")
            assert result.ids == expected.ids
            np.testing.assert_array_equal(result.vectors, expected.vectors)


@pytest.mark.slow  # a second 2-process run (~25 s on 2 cores)
def test_two_processes_reuse_the_parts_of_a_killed_run(images, cli_reference, tmp_path):
    """Parts left by a killed run are read, not recomputed: made visible by negating them."""
    expected, _ = cli_reference
    out = tmp_path / "ddp"
    _killed_run(folder_records(images), out)
    for name in ("part-000000000.npz", "part-000000004.npz"):  # rank 0's first chunk, rank 1's only
        part = store.load_part(out / name)
        part.embeddings.vectors = -part.embeddings.vectors
        store.write_part(out / name, part)
    run = _embed_two_processes(images, out)
    assert run.returncode == 0, run.stderr[-3000:]
    result = Embeddings.load(out / "embeddings.npz")
    assert result.ids == expected.ids
    np.testing.assert_array_equal(result.vectors[:7], -expected.vectors[:7])  # 4 + 3 (one skipped)
    np.testing.assert_array_equal(result.vectors[7:], expected.vectors[7:])
    assert "img04_bad.jpg" in (out / "skipped.tsv").read_text()


@pytest.mark.slow  # a 2-process run (~25 s on 2 cores)
def test_a_failing_rank_stops_every_rank(images, small_chunks, tmp_path):
    """img04_bad is in rank 0's window (chunks 0 and 4): rank 1 must not wait for it forever."""
    out = tmp_path / "ddp"
    run = _embed_two_processes(images, out, "--on-error", "fail")
    assert run.returncode == 2
    assert "img04_bad.jpg" in run.stderr and "rank 0" in run.stderr
    assert sorted(p.name for p in out.glob("part-*.npz")) == ["part-000000000.npz", "part-000000008.npz"]
    assert not (out / "embeddings.npz").exists()

