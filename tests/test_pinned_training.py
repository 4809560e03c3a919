"""Pins the logged losses of 2-step trainings of tiny recipes to the values the code gave before
the issue-13 refactor (a base module + objectives + a distillation subclass, nested config):
behaviour unchanged means these numbers unchanged, to 1e-3 (relative, or absolute near 0): float32
kernels differ between CPUs (AVX2 against AVX-512) by 1e-6 to 3e-4 after two steps, while a
change of behaviour moves a loss by far more.

Each run is the real ``train`` (data, augmentation, module, optimiser, schedule, Lightning) on
12 procedural images, 32 px views, batch 4, one CPU thread, float32.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from copydistill.config import load_config

TINY = ["arch=mobilenetv4_conv_small", "dims=32", "image_size=32", "batch_size=4", "workers=0",
        "sync_bn=false", "augmentations=STRONG_BLUR", "accelerator=cpu", "devices=1", "precision=32-true",
        "log_every_n_steps=1", "warmup_epochs=1", "epochs=1", "max_steps=2", "export=[]", "seed=0"]
TEACHER = "teacher=mobilenetv4_conv_small:dims=32,seed=3"
RUNS = {
    "sscd": ["mixup=true", "directclr_dim=8", "entropy_weight=10"],
    "kd_bank": [TEACHER, "bank_size=16", "kd_weight=1.0", "kd_regression_weight=0.5", "mixup=true",
                "student_size=24", "entropy_weight=1"],
    "kd_predictor_clean": [TEACHER, "dims=16", "kd_predictor=mlp", "kd_target=clean", "cached_views=2",
                           "bank_size=16", "kd_objective=kl", "head_norm=batchnorm", "optimizer=adamw",
                           "absolute_lr=0.001"],
    "moco_kd": [TEACHER, "contrastive=moco", "dims=16", "kd_dim=32", "mixup=false", "moco_queue_size=10",
                "bank_size=10", "kd_views=query", "kd_prepend_current=false", "kd_objective=kl",
                "kd_weight=1.0", "moco_momentum=0.9", "optimizer=sgd"],
}
# recorded before the issue-13 refactor at commit ba2c686 (python tests/test_pinned_training.py prints them)
EXPECTED: dict[str, list[dict[str, float]]] = {
    "sscd": [
        {"center_norm": 0.5647072196006775, "directclr": 10.092279434204102,
         "entropy": -0.026539765298366547, "loss": 14.237833976745605, "nce": 4.410952091217041,
         "nearest_negative_sim": 0.46013322472572327, "negative_sim": 0.22056442499160767,
         "positive_sim": 0.22536654770374298},
        {"center_norm": 0.5628154277801514, "directclr": 8.982203483581543,
         "entropy": -0.1024247258901596, "loss": 12.235194206237793, "nce": 4.277237892150879,
         "nearest_negative_sim": 0.38205111026763916, "negative_sim": 0.21932610869407654,
         "positive_sim": 0.21853069961071014},
    ],
    "kd_bank": [
        {"center_norm": 0.6455058455467224, "entropy": -0.02023998647928238,
         "kd_ce": 9.331774711608887, "kd_key_cos": -0.12920762598514557,
         "kd_kl": 8.221962928771973, "loss": 13.090243339538574, "nce": 2.649500846862793,
         "nearest_negative_sim": 0.4739169478416443, "negative_sim": 0.3194984793663025,
         "positive_sim": 0.38412055373191833},
        {"center_norm": 0.6460773348808289, "entropy": 0.012439971789717674,
         "kd_ce": 6.265725135803223, "kd_key_cos": -0.10376864671707153,
         "kd_kl": 4.4225311279296875, "loss": 11.387742042541504, "nce": 4.005808353424072,
         "nearest_negative_sim": 0.5071123838424683, "negative_sim": 0.3282104432582855,
         "positive_sim": 0.3561130464076996},
    ],
    "kd_predictor_clean": [
        {"center_norm": 0.06350897252559662, "entropy": -0.29022860527038574,
         "kd_ce": 6.685514450073242, "kd_kl": 4.668903827667236, "loss": -1.7410492897033691,
         "nce": 6.498918056488037, "nearest_negative_sim": 0.1008903756737709,
         "negative_sim": -0.12754489481449127, "positive_sim": -0.20246347784996033},
        {"center_norm": 0.0533604733645916, "entropy": -0.2705332934856415,
         "kd_ce": 5.868020534515381, "kd_kl": 3.121926784515381, "loss": -2.672826051712036,
         "nce": 5.130980491638184, "nearest_negative_sim": 0.1354636400938034,
         "negative_sim": -0.14446015655994415, "positive_sim": -0.11046028137207031},
    ],
    "moco_kd": [
        {"center_norm": 0.685330331325531, "hard_negative": 0.2906491458415985,
         "hardest_negative_sim": 0.2502840757369995, "kd_ce": 5.993185043334961,
         "kd_kl": 4.617432117462158, "loss": 6.278141498565674, "nce": 0.20746347308158875,
         "negative_sim": -0.05573446676135063, "positive_sim": 0.4192151725292206},
        {"center_norm": 0.7201325297355652, "hard_negative": 1.1735386848449707,
         "hardest_negative_sim": 0.6426263451576233, "kd_ce": 7.261785507202148,
         "kd_kl": 6.148189067840576, "loss": 13.067793846130371, "nce": 1.051911473274231,
         "negative_sim": 0.21609124541282654, "positive_sim": 0.6432154774665833},
    ],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from copydistill.data.procedural import procedural_image

    folder = tmp_path_factory.mktemp("pinned_images")
    for i in range(12):
        procedural_image(i, long_side=(64, 96)).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def logged_losses(images: Path, out: Path, overrides: list[str]) -> list[dict[str, float]]:
    """The ``train/*`` values of each step, as the CSV logger wrote them."""
    from copydistill.train.run import train

    config = load_config(None, [f"train_images={images}", f"out_dir={out}", f"cache_dir={out / 'cache'}",
                                *TINY, *overrides])
    train(config, progress=False)
    rows = list(csv.DictReader(next((out / "logs").rglob("metrics.csv")).open()))
    steps = [{k.removeprefix("train/"): float(v) for k, v in row.items() if k.startswith("train/") and v}
             for row in rows]
    return [step for step in steps if "loss" in step]


@pytest.mark.parametrize("name", list(RUNS))
def test_two_step_losses_are_unchanged(name, images, tmp_path):
    got = logged_losses(images, tmp_path / name, RUNS[name])
    expected = EXPECTED[name]
    assert len(got) == len(expected) == 2
    for step, (g, e) in enumerate(zip(got, expected)):
        assert set(g) == set(e), (step, sorted(set(g) ^ set(e)))
        wrong = {k: (g[k], e[k]) for k in e if not math.isclose(g[k], e[k], rel_tol=1e-3, abs_tol=1e-3)}
        assert not wrong, (name, step, wrong)


if __name__ == "__main__":  # print the values to pin
    import json
    import tempfile

    torch.set_num_threads(1)
    from copydistill.data.procedural import procedural_image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(12):
            procedural_image(i, long_side=(64, 96)).save(folder / f"{i:03d}.jpg", quality=90)
        print(json.dumps({n: logged_losses(folder, Path(tmp) / n, o) for n, o in RUNS.items()}, indent=1))
