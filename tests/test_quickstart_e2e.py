"""The one-command demo end to end, shrunk: the tiny benchmark, one epoch per student, through
every stage (benchmark, teacher, both trainings, evaluations, ONNX exports, report)."""

from __future__ import annotations

import json

import numpy as np


def test_quickstart_runs_every_stage_and_writes_the_scored_students(tmp_path):
    from copydistill.models.registry import load_descriptor
    from copydistill.quickstart import run_quickstart

    out = tmp_path / "qs"
    # kd_end_epoch: the KD term counts in the first epoch only, through the real Trainer's step count
    run_quickstart(out, size="tiny", seed=0, overrides=["epochs=2", "cached_views=2", "kd_end_epoch=1"])
    summary = json.loads((out / "quickstart.json").read_text())
    models = [s["model"] for s in summary["summaries"]]
    assert models == ["sscd-int8", "resnet18 KD", "resnet18 SSCD-only", "resnet18 untrained", "phash", "pdq"]
    assert all(0.0 <= s["uAP"] <= 1.0 for s in summary["summaries"])
    assert (out / "report.html").is_file()
    kd, twin = (load_descriptor(f"onnx:{out / name}") for name in ("student_kd.onnx", "student_sscd_only.onnx"))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    a, b = kd.embed_batch(pixels), twin.embed_batch(pixels)
    # the recipe whitens both students to 512 dims; the tiny train split whitens at most one fewer
    train_images = len(list((out / "benchmark" / "images" / "train").iterdir()))
    whitened = min(512, train_images - 1)
    assert a.shape == b.shape == (2, whitened) and not np.allclose(a, b)  # two different students
    report = (out / "report.html").read_text()
    assert "whitened to at most 512 dims (learned whitening" in report
    assert "until epoch 1.0)" in report
    # the recipe distils towards the unedited images' keys, taken from the teacher's evaluation
    cache = out / "view-cache"
    assert not list(cache.glob("teacher-*.npy"))  # no teacher pass per view
    (keys,) = cache.glob("image-keys-*.npy")
    teacher_train = np.load(out / "eval" / "teacher" / "embeddings" / "train" / "embeddings.npz")
    np.testing.assert_array_equal(np.load(keys), teacher_train["vectors"])
