import hashlib
import json

import pytest

from copydistill.data.benchmark import SIZES, make_benchmark
from copydistill.data.disc import DiscLayout, read_ground_truth, disc_records
from copydistill.errors import CopydistillError


def _digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "benchmark.json":
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_layout_and_counts(tiny_benchmark):
    spec = SIZES["tiny"]
    layout = DiscLayout.find(tiny_benchmark)
    refs = disc_records(layout.references)
    queries = disc_records(layout.queries)
    train = disc_records(layout.train)
    assert len(refs) == spec.matched + spec.distractor_references
    assert len(queries) == spec.matched + spec.unmatched_queries
    assert len(train) == spec.train
    assert refs[0].id == "R000000" and queries[0].id == "Q00000" and train[0].id == "T000000"
    gt = read_ground_truth(layout.ground_truth)
    assert len(gt) == spec.matched
    assert {g.reference for g in gt} <= {r.id for r in refs}
    rows = (tiny_benchmark / "dev_ground_truth.csv").read_text().splitlines()
    assert rows[0] == "query_id,reference_id" and len(rows) == 1 + len(queries)


def test_edit_log_matches_ground_truth(tiny_benchmark):
    gt = {(g.query, g.reference) for g in read_ground_truth(tiny_benchmark / "dev_ground_truth.csv")}
    records = [json.loads(line) for line in (tiny_benchmark / "edits.jsonl").read_text().splitlines()]
    assert {(r["query_id"], r["reference_id"]) for r in records if r["reference_id"]} == gt
    assert all(1 <= len(r["edits"]) <= 4 for r in records)
    assert any(len(r["edits"]) >= 2 for r in records)
    assert all("op" in e for r in records for e in r["edits"])


def test_train_never_shares_a_source_with_eval(tiny_benchmark):
    meta = json.loads((tiny_benchmark / "benchmark.json").read_text())
    records = [json.loads(line) for line in (tiny_benchmark / "edits.jsonl").read_text().splitlines()]
    eval_sources = set(meta["reference_sources"].values()) | {r["source"] for r in records}
    assert not eval_sources & set(meta["train_sources"])
    assert not set(meta["eval_photos"]) & set(meta["train_photos"])


def test_matched_query_source_is_its_reference(tiny_benchmark):
    meta = json.loads((tiny_benchmark / "benchmark.json").read_text())
    for line in (tiny_benchmark / "edits.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["reference_id"]:
            assert meta["reference_sources"][record["reference_id"]] == record["source"]
        else:
            assert record["source"] not in meta["reference_sources"].values()


def test_same_seed_same_benchmark(tmp_path, tiny_benchmark):
    again = make_benchmark(tmp_path / "again", "tiny", seed=0, source="procedural", workers=1, progress=False)
    assert _digest(again) == _digest(tiny_benchmark)
    other = make_benchmark(tmp_path / "other", "tiny", seed=1, source="procedural", workers=1, progress=False)
    assert _digest(other) != _digest(tiny_benchmark)


def test_refuses_non_empty_folder_and_unknown_size(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(CopydistillError, match="not empty"):
        make_benchmark(tmp_path / "busy", "tiny", progress=False)
    with pytest.raises(CopydistillError, match="unknown benchmark size"):
        make_benchmark(tmp_path / "new", "huge", progress=False)


def test_reserved_photos_refused(tmp_path):
    folder = tmp_path / "gcompris-qt-data"
    folder.mkdir()
    with pytest.raises(CopydistillError, match="reserved"):
        make_benchmark(tmp_path / "b", "tiny", photo_dirs=[folder], progress=False)
