"""Score normalisation against a background (``--background``) in ``dedup`` and ``index search``:
the template chain of issue 15 (benchmarks/template_chain.py) is broken, real copies stay."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from copydistill.cli import main
from copydistill.eval.matching import sscd_score_bias
from copydistill.search.dedup import similar_pairs
from copydistill.search.normalise import background_offset, make_background

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "template_chain.py"


def _script():
    spec = importlib.util.spec_from_file_location("template_chain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dedup(capsys, folder, cache, *extra):
    code = main(["dedup", str(folder), "--model", "sscd-int8", "--threshold", "0.75", "--json",
                 "--quiet", "--cache", str(cache), *map(str, extra)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    payload = json.loads(captured.out)
    return [sorted(Path(m["path"]).name for m in g["members"]) for g in payload["groups"]], payload


def test_background_breaks_the_template_chain_and_keeps_real_copies(tmp_path, capsys):
    folder, background = _script().make_example(tmp_path)
    raw, _ = _dedup(capsys, folder, tmp_path / "cache")
    normalised, payload = _dedup(capsys, folder, tmp_path / "cache", "--background", background)
    pairs = [[f"pair{i}_copy.jpg", f"pair{i}_original.png"] for i in range(3)]
    chained = [g for g in raw if sum(name.startswith("framed_") for name in g) >= 3]
    assert chained, f"raw scores should chain unrelated framed photos: {raw}"
    assert all(p in raw for p in pairs)
    assert all(p in normalised for p in pairs), normalised  # the real copies survive
    assert not any(name.startswith("framed_") for g in normalised for name in g), normalised
    assert "background images" in payload["normalisation"]


def test_correction_is_centred_sscd_bias_and_folds_into_pairs():
    rng = np.random.default_rng(0)
    background = rng.normal(size=(40, 16)).astype(np.float32)
    background /= np.linalg.norm(background, axis=1, keepdims=True)
    bg = make_background(background, "bg")
    sims = background @ background.T
    np.fill_diagonal(sims, -np.inf)
    loo = np.sort(sims, axis=1)[:, ::-1][:, :3].mean(axis=1)
    assert bg.offset == pytest.approx(float(np.median(loo)), abs=1e-5)
    assert background_offset(background) == pytest.approx(bg.offset)
    vectors = rng.normal(size=(12, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    correction = bg.correction(vectors)
    np.testing.assert_allclose(correction, sscd_score_bias(vectors, background) - bg.offset, atol=1e-6)
    left, right, scores = similar_pairs(vectors, -0.2, correction)
    full = vectors @ vectors.T - (correction[:, None] + correction[None, :]) / 2
    expected = {(i, j) for i in range(12) for j in range(i + 1, 12) if full[i, j] >= -0.2}
    assert set(zip(left.tolist(), right.tolist(), strict=True)) == expected
    for i, j, s in zip(left, right, scores, strict=True):
        assert s == pytest.approx(full[i, j], abs=1e-5)
    with pytest.raises(Exception, match="at least 5"):
        make_background(background[:3], "tiny")


def test_index_search_with_background_normalises_then_thresholds(tiny_benchmark, tmp_path, capsys):
    images = Path(tiny_benchmark) / "images"
    index = tmp_path / "index"
    assert main(["index", "build", str(images / "references"), "--model", "phash", "--out", str(index),
                 "--quiet"]) == 0
    capsys.readouterr()
    args = ["index", "search", str(index), str(images / "dev_queries"), "--k", "3", "--json", "--quiet"]
    assert main(args) == 0
    raw = json.loads(capsys.readouterr().out)
    assert main([*args, "--background", str(images / "train")]) == 0
    captured = capsys.readouterr()
    normalised = json.loads(captured.out)
    assert "background images" in captured.err and normalised["normalisation"]
    by_query = {q["query"]: q["matches"] for q in raw["queries"]}
    shifts = []
    for q in normalised["queries"]:
        for before, after in zip(by_query[q["query"]], q["matches"], strict=True):
            assert after["reference"] == before["reference"]  # same order: one shift per query
            assert after["raw_score"] == pytest.approx(before["score"], abs=1e-6)
            shifts.append(round(after["raw_score"] - after["score"], 5))
    assert len(set(shifts)) > 1  # the correction differs per query
    cut = sorted(m["score"] for q in normalised["queries"] for m in q["matches"])[len(shifts) // 2]
    assert main([*args, "--background", str(images / "train"), "--threshold", str(cut)]) == 0
    kept = json.loads(capsys.readouterr().out)
    scores = [m["score"] for q in kept["queries"] for m in q["matches"]]
    assert scores and min(scores) >= cut and len(scores) < len(shifts)
