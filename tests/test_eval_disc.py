import json

import pytest

from copydistill.cli import main
from copydistill.data.disc import DiscLayout
from copydistill.eval.disc import evaluate_disc
from copydistill.eval.metrics import evaluate
from copydistill.eval.predictions import read_predictions
from copydistill.models import load_descriptor


@pytest.fixture(scope="module")
def phash_result(tiny_benchmark, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "phash"
    return evaluate_disc(DiscLayout.find(tiny_benchmark), load_descriptor("phash"), out, codec=True,
                         codec_dims=16, progress=False)


def test_rows_files_and_metrics_agree(phash_result):
    out = phash_result.out
    assert [(r.codec, r.score_norm) for r in phash_result.rows] == [
        ("Flat", "None"), ("Flat", "1.00[0,2]"), ("PCAW16,L2norm,Flat", "None"),
        ("PCAW16,L2norm,Flat", "1.00[0,2]"),
    ]
    for row in phash_result.rows:
        predictions = read_predictions(out / row.predictions_file)
        again = evaluate(phash_result.gt, predictions)
        assert again.average_precision == pytest.approx(row.metrics.average_precision, abs=1e-5)
        # k = 10 per query
        assert row.metrics.num_predictions == 10 * phash_result.counts["queries"]
    payload = json.loads((out / "disc_metrics.json").read_text())
    assert payload["summary"]["uAP"] == pytest.approx(phash_result.rows[0].metrics.average_precision)
    header = (out / "disc_metrics.csv").read_text().splitlines()[0]
    assert header.startswith("codec,score_norm,uAP,accuracy-at-1,recall-at-p90")


def test_score_norm_keeps_per_query_ranking(phash_result):
    plain, normed = phash_result.rows[0].metrics, phash_result.rows[1].metrics
    assert plain.recall_at_rank1 == normed.recall_at_rank1


def test_embeddings_are_cached(phash_result, tiny_benchmark):
    again = evaluate_disc(DiscLayout.find(tiny_benchmark), load_descriptor("phash"), phash_result.out,
                          progress=False)
    assert again.images_per_second is None  # nothing re-embedded
    assert again.rows[0].metrics == phash_result.rows[0].metrics


def test_global_candidates(tiny_benchmark, tmp_path):
    result = evaluate_disc(DiscLayout.find(tiny_benchmark), load_descriptor("phash"), tmp_path,
                           max_results=50, score_norm="isc", progress=False)
    assert all(r.metrics.num_predictions == 50 for r in result.rows)
    assert result.rows[1].score_norm.startswith("isc")


def test_cli_eval_disc_with_report(tiny_benchmark, tmp_path, capsys):
    code = main(["eval", "disc", "--data", str(tiny_benchmark), "--model", "phash",
                 "--model", "resnet18:dims=32", "--resize", "square:64", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "phash" in printed and "resnet18:dims=32" in printed and "uAP_SN" in printed
    page = (tmp_path / "report.html").read_text()
    assert "Precision-recall" in page and "Worst misses" in page and "data:image/png;base64" in page
    assert (tmp_path / "phash" / "disc_metrics.csv").is_file()


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["eval", "disc", "--data", str(tmp_path / "nowhere"), "--model", "phash",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["eval", "disc", "--data", str(tmp_path), "--model", "nonsense",
                 "--out", str(tmp_path / "o")]) == 2


def test_knn_matching_goes_to_faiss_gpus_when_present_and_range_search_stays_on_the_cpu(monkeypatch):
    """``to_gpu`` (search/faiss_tools.py) is asked for every exact kNN index; the range search of
    global matching never goes there (FAISS' GPU indexes have none)."""
    import numpy as np

    import copydistill.eval.matching as matching
    from copydistill.io.embeddings import Embeddings

    moved = []
    monkeypatch.setattr(matching, "to_gpu", lambda index: (moved.append(index.d), index)[1])
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(6, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    q = Embeddings([f"Q{i}" for i in range(3)], vecs[:3], None)
    r = Embeddings([f"R{i}" for i in range(3)], vecs[3:], None)
    assert len(matching.knn_predictions(q, r, k=2)) == 6 and moved == [4]
    moved.clear()
    matching.global_predictions(q, r, max_results=4)
    assert moved == [5]  # the kNN estimate (bias column added), not the range search
