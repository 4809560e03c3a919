"""Behaviour pinned across the issue-13 refactor (where things live changes; results do not).

Every number below was recorded by running this very code on the unchanged package at commit
ba2c686 (before the issue-13 refactor), on one CPU thread. A refactor that moves code must leave
them all equal (to 1e-6): the tiny benchmark's metrics for pHash and for a seeded, untrained
ResNet-18 loaded through a ``ckpt:`` student file, an index search, a transitive dedup and the
logged loss of two training steps of a tiny recipe.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from copydistill.data.disc import DiscLayout
from copydistill.eval.disc import evaluate_disc
from copydistill.models import load_descriptor

TOL = 1e-6
# trained losses: float32 kernels differ between CPUs (AVX2 against AVX-512) in the last digits,
# up to ~3e-4 after two steps; a change of behaviour moves them by far more than this
LOSS_TOL = dict(rel=1e-3, abs=1e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(result) -> list[tuple]:
    return [(r.codec, r.score_norm, r.metrics.average_precision, r.metrics.recall_at_p90,
             r.metrics.recall_at_rank1, r.metrics.recall_at_rank10, r.metrics.num_predictions)
            for r in result.rows]


def _assert_rows(got: list[tuple], expected: list[tuple]) -> None:
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[2:] == pytest.approx(e[2:], abs=TOL), g[:2]


def test_phash_metrics_on_the_tiny_benchmark(tiny_benchmark, tmp_path):
    layout = DiscLayout.find(tiny_benchmark)
    knn = evaluate_disc(layout, load_descriptor("phash"), tmp_path / "knn", codec=True, codec_dims=16,
                        progress=False)
    _assert_rows(_rows(knn), [
        ("Flat", "None", 0.3016147110775162, 0.08333333333333333, 0.3333333333333333, 0.6666666666666666, 200),
        ("Flat", "1.00[0,2]", 0.33189036713133097, 0.16666666666666666, 0.3333333333333333,
         0.6666666666666666, 200),
        ("PCAW16,L2norm,Flat", "None", 0.26726378869360895, 0.16666666666666666, 0.3333333333333333,
         0.6666666666666666, 200),
        ("PCAW16,L2norm,Flat", "1.00[0,2]", 0.23868076958439688, 0.08333333333333333, 0.3333333333333333,
         0.6666666666666666, 200),
    ])
    top = evaluate_disc(layout, load_descriptor("phash"), tmp_path / "global", max_results=50,
                        score_norm="isc", progress=False)
    _assert_rows(_rows(top), [
        ("Flat", "None", 0.2912037037037037, 0.08333333333333333, 0.3333333333333333, 0.4166666666666667, 50),
        ("Flat", "isc:2.0x10th", 0.2796296296296296, 0.08333333333333333, 0.3333333333333333,
         0.4166666666666667, 50),
    ])


def test_untrained_resnet18_student_file_metrics(tiny_benchmark, tmp_path):
    from copydistill.models.backbones import EmbeddingModel

    torch.manual_seed(0)
    model = EmbeddingModel("resnet18", dims=32)
    student = tmp_path / "student.pt"
    torch.save({"arch": "resnet18", "dims": 32, "kd_dim": None, "gem_p": 3.0, "head_norm": "none",
                "resize": "square:64", "state_dict": model.state_dict()}, student)
    result = evaluate_disc(DiscLayout.find(tiny_benchmark), load_descriptor(f"ckpt:{student}"),
                           tmp_path / "eval", progress=False)
    _assert_rows(_rows(result), [
        ("Flat", "None", 0.367371632996633, 0.25, 0.5, 0.5833333333333334, 200),
        ("Flat", "1.00[0,2]", 0.3449183263452131, 0.25, 0.5, 0.5833333333333334, 200),
    ])


def test_index_search_and_dedup_with_phash(tiny_benchmark, tmp_path):
    from copydistill.search.dedup import find_copies
    from copydistill.search.index import build_index, search_index

    images = Path(tiny_benchmark) / "images"
    phash = load_descriptor("phash")
    built = build_index(images / "references", phash, tmp_path / "index", progress=False)
    found = search_index(built.index, phash, [images / "dev_queries"], k=2, progress=False)
    assert [(Path(q.query).name, m.reference, m.score) for q in found.sorted()[:5] for m in q.matches] == [
        ("Q00015.jpg", "R000010.jpg", 0.9375), ("Q00015.jpg", "R000001.jpg", 0.25),
        ("Q00006.jpg", "R000001.jpg", 0.5625), ("Q00006.jpg", "R000015.jpg", 0.5),
        ("Q00008.jpg", "R000027.jpg", 0.5625), ("Q00008.jpg", "R000006.jpg", 0.3125),
        ("Q00013.jpg", "R000001.jpg", 0.5625), ("Q00013.jpg", "R000006.jpg", 0.3125),
        ("Q00003.jpg", "R000022.jpg", 0.375), ("Q00003.jpg", "R000010.jpg", 0.1875),
    ]
    groups = find_copies(images, phash, 0.55, progress=False).groups
    assert [[(Path(m.path).relative_to(images.resolve()).as_posix(), m.best_score) for m in g.members]
            for g in groups] == [
        [("dev_queries/Q00006.jpg", 0.5625), ("dev_queries/Q00013.jpg", 0.5625),
         ("references/R000001.jpg", 0.5625)],
        [("dev_queries/Q00015.jpg", 0.9375), ("references/R000010.jpg", 0.9375)],
        [("dev_queries/Q00008.jpg", 0.5625), ("references/R000027.jpg", 0.5625)],
    ]


def test_two_training_steps_log_the_recorded_losses(tmp_path):
    from copydistill.config import load_config
    from copydistill.data.procedural import procedural_image
    from copydistill.train.run import train

    (tmp_path / "images").mkdir()
    for i in range(8):
        procedural_image(i, long_side=(64, 96)).save(tmp_path / "images" / f"{i:03d}.jpg", quality=90)
    config = load_config(None, [
        f"train_images={tmp_path / 'images'}", f"out_dir={tmp_path / 'run'}", "arch=mobilenetv4_conv_small",
        "dims=32", "image_size=32", "batch_size=4", "workers=0", "sync_bn=false",
        "augmentations=STRONG_BLUR", "accelerator=cpu", "devices=1", "log_every_n_steps=1",
        "warmup_epochs=1", "epochs=1", "max_steps=2", "export=[]", "precision=32-true", "seed=0",
    ])
    out = train(config, progress=False)
    (metrics,) = (out / "logs").glob("version_*/metrics.csv")
    losses = [float(r["train/loss"]) for r in csv.DictReader(metrics.open()) if r.get("train/loss")]
    assert losses == pytest.approx([0.8838880062103271, -0.0645761489868164], **LOSS_TOL)
