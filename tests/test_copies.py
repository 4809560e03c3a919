"""Teacher-mined copies in the train split (``kd_copy_threshold``, train/copies.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from copydistill.config import config_from_dict, load_config
from copydistill.errors import CopydistillError
from copydistill.train.copies import TeacherCopies, image_embeddings, pair_order

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _keys() -> np.ndarray:
    """8 images: 2 and 5 are near copies of 0, 7 of 3; the rest unrelated."""
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(8, 32)).astype(np.float32)
    keys[2] = keys[0] + 0.2 * rng.normal(size=32)
    keys[5] = keys[0] + 0.3 * rng.normal(size=32)
    keys[7] = keys[3] + 0.2 * rng.normal(size=32)
    return image_embeddings(keys)


def test_copies_are_the_pairs_above_the_threshold_most_similar_first():
    keys = _keys()
    copies = TeacherCopies(keys, 0.8)
    sims = keys @ keys.T
    np.fill_diagonal(sims, -1)
    expected = {(i, j) for i in range(8) for j in range(8) if sims[i, j] > 0.8}
    found = {(i, int(j)) for i, row in enumerate(copies.table.numpy()) for j in row if j >= 0}
    assert found == expected and {(0, 2), (0, 5), (3, 7), (7, 3)} <= found
    assert copies.pairs == len(expected) // 2
    row = copies.table[0][copies.table[0] >= 0].numpy()
    assert list(row) == sorted(row, key=lambda j: -sims[0, j])  # most similar first
    assert TeacherCopies(keys, 0.8, max_copies=1).table.shape == (8, 1)
    related = copies.related(torch.tensor([0, 3, 4]), torch.tensor([2, 7, 0, 5]))
    assert related.tolist() == [[True, False, False, True], [False, True, False, False], [False] * 4]


def test_view_keys_are_averaged_per_image():
    views = np.stack([np.eye(4, dtype=np.float32)[[0, 1]], np.eye(4, dtype=np.float32)[[2, 2]]])  # (2, 2, 4)
    embeddings = image_embeddings(views)
    np.testing.assert_allclose(embeddings, [[2 ** -0.5, 2 ** -0.5, 0, 0], [0, 0, 1, 0]], atol=1e-6)


def test_pair_order_places_each_image_once_and_copies_next_to_it():
    copies = TeacherCopies(_keys(), 0.8)
    rng = np.random.default_rng(1)
    for _ in range(20):
        order = pair_order(rng.permutation(8), copies.partners(), rng)
        assert sorted(order.tolist()) == list(range(8))
        position = {int(v): k for k, v in enumerate(order)}
        assert abs(position[3] - position[7]) == 1  # 3 and 7 have only each other
        first = min(position[0], position[2], position[5])
        assert order[first + 1] in {0, 2, 5}  # the first of 0's group placed is followed by one of it


def test_epoch_sampler_with_partners_is_seeded_and_sharded():
    from copydistill.train.data import EpochSampler

    partners = TeacherCopies(_keys(), 0.8).partners()
    a = EpochSampler(8, seed=3, partners=partners)
    a.set_epoch(2)
    b = EpochSampler(8, seed=3, partners=partners)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(i for _, i in a) == list(range(8))
    ranks = [list(EpochSampler(8, seed=3, rank=r, world=2, partners=partners)) for r in (0, 1)]
    assert sorted(i for rank in ranks for _, i in rank) == list(range(8))


def test_mined_copies_become_infonce_positives():
    from copydistill.models.backbones import EmbeddingModel
    from copydistill.train.objectives import SSCDObjective, StudentInput

    objective = SSCDObjective(temperature=0.05, weight=1.0, entropy_weight=1.0, directclr_dim=0,
                              directclr_weight=0.0, mixup=False, seed=0)
    seen = {}

    def record(embeddings, match):
        seen["match"] = match.clone()
        return embeddings.sum() * 0, {}

    objective.infonce.forward = record
    student = EmbeddingModel("resnet18", dims=16).eval()
    views = torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8)
    ids = torch.tensor([0, 2, 3, 4])  # 0 and 2 are copies
    objective(views, ids, student, StudentInput(), step=0, both_views=True)
    plain = seen["match"]
    objective.copies = TeacherCopies(_keys(), 0.8)
    objective(views, ids, student, StudentInput(), step=0, both_views=True)
    widened = seen["match"]
    added = widened & ~plain
    rows = torch.cat([ids, ids])
    expected = (rows[:, None] == 0) & (rows[None, :] == 2) | (rows[:, None] == 2) & (rows[None, :] == 0)
    assert torch.equal(added, expected) and int(added.sum()) == 8  # 2 views x 2 views, both ways


def test_copy_threshold_config_is_checked():
    assert load_config(None, ["teacher=sscd-int8", "kd_copy_threshold=0.4"]).distillation.copy_threshold == 0.4
    for bad in ("-0.1", "1.5"):
        with pytest.raises(CopydistillError, match="copy_threshold"):
            load_config(None, ["teacher=sscd-int8", f"kd_copy_threshold={bad}"])
    with pytest.raises(CopydistillError, match="contrastive=sscd"):
        config_from_dict({"contrastive": "moco", "teacher": "sscd-int8", "kd_dim": 512, "dims": 64,
                          "kd_copy_threshold": 0.4})


def test_training_with_copy_threshold_mines_pairs_from_the_cached_views(tmp_path, capsys):
    from copydistill.data.procedural import procedural_image
    from copydistill.train.run import train

    folder = tmp_path / "images"
    folder.mkdir()
    base = procedural_image(0, long_side=(96, 96))
    for i in range(6):  # 3 crops of one scene (copies for any teacher) and 3 other scenes
        image = base.crop((4 * i, 0, 96 - 4 * i, 96 - 4 * i)) if i < 3 else procedural_image(i, long_side=(96, 96))
        image.save(folder / f"{i:03d}.jpg", quality=90)
    config = load_config(None, [
        f"train_images={folder}", f"out_dir={tmp_path / 'run'}", "arch=resnet18", "dims=32", "image_size=32",
        "batch_size=4", "workers=0", "sync_bn=false", "augmentations=STRONG_BLUR", "accelerator=cpu",
        "devices=1", "epochs=1", "export=[]", "teacher=resnet18:dims=32,seed=3", "cached_views=2",
        f"cache_dir={tmp_path / 'cache'}", "bank_size=8", "kd_weight=1.0", "kd_copy_threshold=0.9"])
    train(config, progress=True)
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("teacher-mined copies"))
    assert "among 6 train images (cosine > 0.9)" in line and int(line.split()[2]) >= 1


def test_with_mixup_only_unmixed_rows_gain_copies():
    from copydistill.augment.mixup import ContrastiveMixup
    from copydistill.models.backbones import EmbeddingModel
    from copydistill.train.objectives import SSCDObjective, StudentInput

    seen = {}
    for copies in (None, TeacherCopies(_keys(), 0.8)):
        objective = SSCDObjective(temperature=0.05, weight=1.0, entropy_weight=1.0, directclr_dim=0,
                                  directclr_weight=0.0, mixup=True, seed=0)
        objective.mixup = ContrastiveMixup(mix_prob=0.5)  # some rows mixed, some not
        objective.copies = copies
        objective.infonce.forward = lambda embeddings, match, key=copies is None: (
            seen.__setitem__(key, match.clone()) or (embeddings.sum() * 0, {}))
        out = objective(torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 2, 3, 4]),
                        EmbeddingModel("resnet18", dims=16).eval(), StudentInput(), step=3, both_views=True)
    added = seen[False] & ~seen[True]
    mixed = out.mixed
    assert 0 < int(mixed.sum()) < 8
    assert not added[mixed].any() and not added[:, mixed].any()
    rows = torch.tensor([0, 2, 3, 4, 0, 2, 3, 4])
    pair = ((rows[:, None] == 0) & (rows[None, :] == 2)) | ((rows[:, None] == 2) & (rows[None, :] == 0))
    assert torch.equal(added, pair & ~mixed[:, None] & ~mixed[None, :])
