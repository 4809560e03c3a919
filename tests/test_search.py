"""The search tool (copydistill.search): persistent index, search, dedup, calibration, galleries.

Models are pHash (exact, fast) and a 32-d random ResNet-18 at 64x64; data is the tiny benchmark.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from copydistill.cli import main
from copydistill.data.disc import DiscLayout, canonical_id, read_ground_truth
from copydistill.data.procedural import procedural_image
from copydistill.errors import CopydistillError
from copydistill.io import embeddings as store
from copydistill.eval.disc import evaluate_disc
from copydistill.eval.metrics import Prediction, evaluate
from copydistill.io.lock import LOCK_FILE
from copydistill.models import load_descriptor
from copydistill.models.phash import PHashDescriptor
from copydistill.search import calibrate as calibrate_module
from copydistill.search.calibrate import (
    DEFAULT_THRESHOLD,
    Calibration,
    find_calibration,
    resolve_threshold,
    save_calibration,
)
from copydistill.search.dedup import connected_groups, find_copies, similar_pairs
from copydistill.search.gallery import find_chromium, screenshot
from copydistill.search.index import add_to_index, build_index, search_index
from copydistill.search.store import CACHE_DIR, MODEL_FILE, SKIPPED_FILE, load_index

STUDENT, STUDENT_RESIZE = "resnet18:dims=32", "square:64"


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Every test gets its own per-user calibration store."""
    monkeypatch.setenv("COPYDISTILL_CACHE", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


@pytest.fixture(scope="module")
def refs(tiny_benchmark):
    return Path(tiny_benchmark) / "images" / "references"


@pytest.fixture(scope="module")
def queries(tiny_benchmark):
    return Path(tiny_benchmark) / "images" / "dev_queries"


@pytest.fixture(scope="module")
def phash_index(refs, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "phash"
    build_index(refs, PHashDescriptor(), out, spec="phash", progress=False)
    return out


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def bad_jpeg(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg" * 4)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------
# End to end: the index reproduces `eval disc`
# --------------------------------------------------------------------------------------------


def test_index_search_reproduces_eval_disc_uap(tiny_benchmark, refs, queries, tmp_path, capsys):
    index_dir, results = tmp_path / "index", tmp_path / "results.json"
    code, out, err = run(capsys, "index", "build", refs, "--model", STUDENT, "--resize", STUDENT_RESIZE,
                         "--out", index_dir, "--quiet")
    assert code == 0, err
    assert "indexed 30 references" in out
    code, _, err = run(capsys, "index", "search", index_dir, queries, "--k", 10, "--json",
                       "--out", results, "--quiet")
    assert code == 0, err
    payload = json.loads(results.read_text())
    predictions = [
        Prediction(canonical_id(Path(q["query"]).stem), canonical_id(Path(m["path"]).stem), m["score"])
        for q in payload["queries"] for m in q["matches"]
    ]
    assert len(predictions) == 10 * 20
    for q in payload["queries"]:  # sorted by score within each query, ranks 1..k
        assert [m["score"] for m in q["matches"]] == sorted((m["score"] for m in q["matches"]), reverse=True)
        assert [m["rank"] for m in q["matches"]] == list(range(1, 11))

    layout = DiscLayout.find(tiny_benchmark)
    reference = evaluate_disc(layout, load_descriptor(STUDENT, resize=STUDENT_RESIZE), tmp_path / "eval",
                              k=10, score_norm="none", progress=False)
    row = reference.rows[0]
    assert (row.codec, row.score_norm) == ("Flat", "None")
    ours = evaluate(read_ground_truth(layout.ground_truth), predictions)
    assert ours.average_precision == pytest.approx(row.metrics.average_precision, abs=1e-6)
    assert ours.recall_at_rank1 == row.metrics.recall_at_rank1
    expected = {(p.query, p.reference) for p in reference.predictions[("Flat", "None")]}
    assert {(p.query, p.reference) for p in predictions} == expected


# --------------------------------------------------------------------------------------------
# Building, resuming, adding
# --------------------------------------------------------------------------------------------


class InterruptingPHash(PHashDescriptor):
    """pHash (same fingerprint) that counts ``embed_pixels`` calls and can raise Ctrl-C on one."""

    def __init__(self, interrupt_on: int | None = None):
        self.calls = 0
        self.interrupt_on = interrupt_on

    def embed_pixels(self, pixels):
        self.calls += 1
        if self.calls == self.interrupt_on:
            raise KeyboardInterrupt
        return super().embed_pixels(pixels)


def test_interrupted_build_resumes(refs, phash_index, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHUNK", 8)
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build_index(refs, InterruptingPHash(interrupt_on=2), out, spec="phash", progress=False)
    assert not (out / MODEL_FILE).exists()
    assert len(list((out / CACHE_DIR).rglob("part-*.npz"))) == 1  # in this run's own folder
    with pytest.raises(CopydistillError, match="interrupted"):
        load_index(out)

    again = InterruptingPHash()
    result = build_index(refs, again, out, spec="phash", progress=False)
    assert again.calls == 3  # chunks 2..4 of 8, 8, 8, 6 images; the first came from the cache
    assert result.resumed == 8 and result.added == 30
    assert not (out / CACHE_DIR).exists()
    straight = load_index(phash_index)
    assert result.index.ids == straight.ids
    np.testing.assert_array_equal(result.index.index.reconstruct_n(0, 30),
                                  straight.index.reconstruct_n(0, 30))


def test_add_extends_and_never_touches_references(refs, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b" / "nested"
    first.mkdir()
    second.mkdir(parents=True)
    images = sorted(refs.glob("*.jpg"))
    for p in images[:20]:
        shutil.copy(p, first / p.name)
    for p in images[20:]:
        shutil.copy(p, second / p.name)
    shutil.copy(images[0], second / images[0].name)  # same name as one in `first`
    bad_jpeg(second / "broken.jpg")
    before = {f: listing(f) for f in (first, second)}

    out = tmp_path / "index"
    build_index(first, PHashDescriptor(), out, spec="phash", progress=False)
    result = add_to_index(out, [second], PHashDescriptor(), progress=False)
    assert result.added == 11 and len(result.index) == 31
    assert set(result.skipped) == {str((second / "broken.jpg").resolve())}
    index = load_index(out)
    assert index.info.generation == 2 and index.info.count == 31
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "ids-0002.npz", "index-0002.faiss",
                                                     MODEL_FILE, SKIPPED_FILE]
    assert len(set(index.ids)) == 31 and f"nested/{images[0].name}" in index.ids
    assert "broken.jpg" in (out / SKIPPED_FILE).read_text()

    # an added reference is found by itself
    hit = search_index(index, PHashDescriptor(), [second / images[25].name], k=1, progress=False)
    assert hit.queries[0].matches[0].path == str((second / images[25].name).resolve())
    assert hit.queries[0].matches[0].score == pytest.approx(1.0)

    # adding the same folder again only retries what is not indexed
    again = add_to_index(out, [second], PHashDescriptor(), progress=False)
    assert again.added == 0 and again.already_indexed == 11 and len(again.index) == 31
    assert before == {f: listing(f) for f in (first, second)}


def test_index_inside_reference_folder_is_refused(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    procedural_image(3, long_side=(48, 64)).save(folder / "a.jpg")
    with pytest.raises(CopydistillError, match="never modified"):
        build_index(folder, PHashDescriptor(), folder / ".index", progress=False)
    assert [p.name for p in folder.iterdir()] == ["a.jpg"]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_other_model_is_refused_naming_both(phash_index, queries, capsys, tmp_path):
    code, _, err = run(capsys, "index", "search", phash_index, queries, "--model", STUDENT,
                       "--resize", STUDENT_RESIZE, "--quiet")
    assert code == 2
    assert "phash" in err and STUDENT in err and "64 dims" in err and "32 dims" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "index", "add", phash_index, queries, "--model", STUDENT, "--quiet")
    assert code == 2 and "phash" in err and STUDENT in err
    assert load_index(phash_index).info.count == 30  # untouched


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, _, err = run(capsys, "index", "build", tmp_path / "empty", "--model", "phash",
                       "--out", tmp_path / "index")
    assert code == 2 and "no images found" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "index").exists()
    code, _, err = run(capsys, "dedup", tmp_path / "empty", "--model", "phash")
    assert code == 2 and "no images found" in err


def test_corrupt_files_go_to_the_skip_list(tmp_path, capsys):
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        procedural_image(10 + i, long_side=(48, 64)).save(folder / "sub" / f"img{i}.png")
    bad_jpeg(folder / "broken.jpg")
    (folder / "zero.png").write_bytes(b"")
    code, out, err = run(capsys, "index", "build", folder, "--model", "phash", "--out",
                         tmp_path / "index", "--quiet")
    assert code == 0, err
    assert "indexed 3 references" in out and "2 file(s) skipped" in out
    skipped = (tmp_path / "index" / SKIPPED_FILE).read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in skipped) == ["broken.jpg", "zero.png"]
    assert all(line.split("\t")[1] for line in skipped)
    assert load_index(tmp_path / "index").ids == [f"sub/img{i}.png" for i in range(3)]

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    bad_jpeg(only_bad / "x.jpg")
    code, _, err = run(capsys, "index", "build", only_bad, "--model", "phash", "--out", tmp_path / "i2")
    assert code == 2 and "none of the 1 images could be decoded" in err
    assert "x.jpg" in (tmp_path / "i2" / SKIPPED_FILE).read_text()


def test_unwritable_outputs_fail_early_and_lose_nothing(phash_index, refs, queries, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("I am a regular file")
    code, _, err = run(capsys, "index", "build", refs, "--model", "phash", "--out", blocker / "index")
    assert code == 2 and "cannot create the folder" in err and "writable" in err
    code, _, err = run(capsys, "index", "search", phash_index, queries, "--json", "--out",
                       blocker / "r.json")
    assert code == 2 and "cannot write --out" in err
    code, _, err = run(capsys, "dedup", refs, "--model", "phash", "--html", blocker / "g.html")
    assert code == 2 and "cannot write --html" in err
    assert blocker.read_text() == "I am a regular file"
    # building over an existing index refuses and keeps it
    code, _, err = run(capsys, "index", "build", refs, "--model", "phash", "--out", phash_index)
    assert code == 2 and "already holds an index" in err and "index add" in err
    assert load_index(phash_index).info.count == 30


def test_bad_queries_and_factories(phash_index, refs, tmp_path, capsys):
    code, _, err = run(capsys, "index", "search", phash_index, tmp_path / "missing.jpg")
    assert code == 2 and "missing.jpg" in err and "not found" in err
    bad_jpeg(tmp_path / "q.jpg")
    good = sorted(refs.glob("*.jpg"))[3]
    code, out, err = run(capsys, "index", "search", phash_index, tmp_path / "q.jpg", good, "--json", "--quiet")
    assert code == 0
    payload = json.loads(out)
    assert [s["path"] for s in payload["skipped"]] == [str(tmp_path / "q.jpg")]
    assert payload["queries"][0]["matches"][0]["reference"] == good.name
    assert "1 query file(s) skipped" in err
    code, _, err = run(capsys, "index", "search", tmp_path, good)
    assert code == 2 and "not a copydistill index" in err

    code, _, err = run(capsys, "index", "build", refs, "--model", "phash", "--out", tmp_path / "i",
                       "--index-factory", "NotAFactory")
    assert code == 2 and "NotAFactory" in err and "Flat" in err
    code, _, err = run(capsys, "index", "build", refs, "--model", "phash", "--out", tmp_path / "i",
                       "--index-factory", "IVF64,Flat", "--quiet")
    assert code == 2 and "IVF64,Flat" in err and "30 reference vectors" in err


def test_ivf_factory_finds_the_same_top_match(refs, tmp_path, capsys):
    out = tmp_path / "ivf"
    result = build_index(refs, PHashDescriptor(), out, spec="phash", factory="IVF2,Flat", nprobe=2,
                         progress=False)
    assert result.index.info.factory == "IVF2,Flat" and len(result.index) == 30
    # FAISS' own advice (39 training points per list) is collected, not sprayed on stderr
    assert any("training points" in note for note in result.notes)
    images = sorted(refs.glob("*.jpg"))[:5]
    hits = search_index(load_index(out), PHashDescriptor(), images, k=1, progress=False)
    assert [Path(q.matches[0].path).name for q in hits.queries] == [p.name for p in images]
    code, out_text, _ = run(capsys, "index", "info", out)
    assert code == 0 and "IVF2,Flat" in out_text and "30 from" in out_text


# --------------------------------------------------------------------------------------------
# Dedup
# --------------------------------------------------------------------------------------------


def test_transitive_grouping():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.8, 0.6, 0.0])  # a·b = 0.8
    c = np.array([0.28, 0.96, 0.0])  # b·c = 0.8, a·c = 0.28
    d = np.array([0.0, 0.0, 1.0])
    vectors = np.stack([a, b, c, d]).astype(np.float32)
    assert connected_groups(4, np.array([0, 1]), np.array([1, 2])) == [[0, 1, 2]]
    i, j, s = similar_pairs(vectors, 0.75)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (1, 2)]
    np.testing.assert_allclose(s, [0.8, 0.8], atol=1e-6)
    assert connected_groups(4, i, j) == [[0, 1, 2]]


@pytest.fixture
def photo_folder(tmp_path):
    """A photo, a resized JPEG re-encode of it, a byte copy of it, and three unrelated images."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    original = procedural_image(7, long_side=(200, 200))
    original.save(folder / "original.png")
    original.resize((original.width * 3 // 4, original.height * 3 // 4), Image.BILINEAR).save(
        folder / "sub" / "smaller.jpg", quality=70)
    shutil.copy(folder / "original.png", folder / "sub" / "copy.png")
    for i in range(3):
        procedural_image(100 + i, long_side=(200, 200)).save(folder / f"other{i}.png")
    return folder


def test_dedup_groups_copies(photo_folder, tmp_path, capsys):
    before = listing(photo_folder)
    result = find_copies(photo_folder, PHashDescriptor(), DEFAULT_THRESHOLD, progress=False)
    assert result.images == 6 and len(result.groups) == 1 and result.duplicates == 2
    group = result.groups[0]
    names = sorted(Path(m.path).name for m in group.members)
    assert names == ["copy.png", "original.png", "smaller.jpg"]
    assert all(m.best_score >= DEFAULT_THRESHOLD for m in group.members)
    exact = {Path(m.path).name: m.exact_of for m in group.members}
    assert exact["copy.png"] is None or exact["original.png"] is None
    assert sum(v is not None for v in exact.values()) == 1  # the byte copy is flagged exact

    code, out, err = run(capsys, "dedup", photo_folder, "--model", "phash", "--json", "--quiet",
                         "--html", tmp_path / "dedup.html", "--cache", tmp_path / "cache")
    assert code == 0
    assert "no calibration stored for phash" in err and "0.75" in err
    payload = json.loads(out)
    assert payload["threshold"] == DEFAULT_THRESHOLD and len(payload["groups"]) == 1
    assert payload["groups"][0]["size"] == 3 and payload["groups"][0]["pairs"]
    page = (tmp_path / "dedup.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 3 and "exact copy of" in page
    code, out, _ = run(capsys, "dedup", photo_folder, "--model", "phash", "--csv", "--threshold", "0.99")
    assert out.splitlines()[0] == "group,path,best_score,score_to_first,exact_of"
    assert before == listing(photo_folder)


# --------------------------------------------------------------------------------------------
# Calibration and thresholds
# --------------------------------------------------------------------------------------------


def test_calibrate_then_threshold_auto(tiny_benchmark, phash_index, queries, user_cache, capsys):
    code, out, err = run(capsys, "calibrate", "--data", tiny_benchmark, "--model", "phash", "--quiet")
    assert code == 0, err
    stored = list((user_cache / "calibration").glob("*.json"))
    assert len(stored) == 1 and str(stored[0]) in out
    fingerprint = PHashDescriptor().fingerprint()
    calibration = find_calibration("phash", fingerprint)
    # the same threshold `eval disc` reports at 90 % precision
    reference = evaluate_disc(DiscLayout.find(tiny_benchmark), PHashDescriptor(),
                              user_cache.parent / "eval", score_norm="none", progress=False)
    assert calibration.threshold(0.9) == pytest.approx(reference.rows[0].metrics.threshold_at_p90)
    assert calibration.threshold(0.99) >= calibration.threshold(0.9)

    threshold = resolve_threshold("auto", "phash", fingerprint)
    assert threshold.value == calibration.threshold(0.9) and threshold.warning is None
    code, out, err = run(capsys, "index", "search", phash_index, queries, "--threshold", "auto",
                         "--json", "--quiet")
    assert code == 0 and "warning" not in err and "only matches with score >=" in err
    payload = json.loads(out)
    assert payload["threshold"] == calibration.threshold(0.9)
    scores = [m["score"] for q in payload["queries"] for m in q["matches"]]
    assert scores and min(scores) >= calibration.threshold(0.9)
    code, out, _ = run(capsys, "index", "info", phash_index)
    assert "0.9" in out and "not calibrated" not in out


def test_threshold_fallback_and_parsing():
    fingerprint = PHashDescriptor().fingerprint()
    fallback = resolve_threshold("auto", "phash", fingerprint)
    assert fallback.value == DEFAULT_THRESHOLD and "calibrate" in fallback.warning
    with pytest.raises(CopydistillError, match="auto99"):
        resolve_threshold("auto99", "phash", fingerprint)
    assert resolve_threshold("0.6", "phash", fingerprint).value == 0.6
    assert resolve_threshold(None, "phash", fingerprint).value is None
    with pytest.raises(CopydistillError, match="use auto"):
        resolve_threshold("high", "phash", fingerprint)


def test_calibration_is_stored_beside_a_model_file(tmp_path, user_cache):
    model = tmp_path / "models" / "student.onnx"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    fingerprint = {"model": f"onnx:{model}", "identity": "abc123", "dims": 128, "resize": "short:288"}
    calibration = Calibration(f"onnx:{model}", fingerprint, {"0.9": 0.61, "0.99": 0.72},
                              {"0.9": 0.5, "0.99": 0.3}, "bench", 0.5, 10, 10, 5, 100)
    written, warnings = save_calibration(calibration)
    assert written[0] == model.with_name("student.onnx.calibration.json") and not warnings
    assert written[1].parent == user_cache / "calibration"
    written[1].unlink()
    # found beside the model, also when the spec names it by another path; not for other weights
    found = find_calibration(f"onnx:{model}", {**fingerprint, "model": "onnx:elsewhere"})
    assert found is not None and found.threshold(0.9) == 0.61
    assert find_calibration(f"onnx:{model}", {**fingerprint, "identity": "other"}) is None
    assert calibrate_module.DEFAULT_THRESHOLD == 0.75


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_gallery_page(phash_index, queries, tmp_path_factory):
    page = tmp_path_factory.mktemp("gallery") / "search.html"
    assert main(["index", "search", str(phash_index), str(queries), "--k", "3", "--html", str(page),
                 "--quiet"]) == 0
    return page


def test_search_gallery_is_self_contained(search_gallery_page):
    page = search_gallery_page.read_text()
    assert page.startswith("<!doctype html>")
    assert page.count('class="row"') == 20  # every query has k = 3 matches without a threshold
    assert page.count("<img ") == 20 * 4 and "data:image/jpeg;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Q00000.jpg" in page


@pytest.mark.skipif(find_chromium() is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_gallery_renders_in_headless_chromium(search_gallery_page, tmp_path):
    png = screenshot(search_gallery_page, tmp_path / "shot.png", width=1000, height=700)
    with Image.open(png) as image:
        assert image.size == (1000, 700)
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # thumbnails drawn, not a blank page
