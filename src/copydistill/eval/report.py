"""Self-contained HTML reports: metrics table, precision-recall curves, score histograms with the
90 %-precision threshold, and a gallery of the worst misses. No external assets (images inline)."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from copydistill.eval.disc import DiscResult  # noqa: E402
from copydistill.eval.metrics import (  # noqa: E402
    GroundTruthPair,
    Prediction,
    label_predictions,
    precision_recall_curve,
)
from copydistill.io.atomic import atomic_write_text  # noqa: E402
from copydistill.io.images import load_image  # noqa: E402
from copydistill.errors import ImageError  # noqa: E402

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
.miss{display:flex;gap:12px;margin:10px 0;align-items:flex-start;border-bottom:1px solid #eee;padding-bottom:8px}
figure{margin:0;text-align:center;font-size:12px}figure img{max-width:200px;max-height:200px;display:block}
.bad{color:#b00}.good{color:#070}
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _labels(gt: list[GroundTruthPair], predictions: list[Prediction]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    return scores, label_predictions(gt, predictions)


def pr_curves(curves: list[tuple[str, list[GroundTruthPair], list[Prediction]]]) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, gt, predictions in curves:
        scores, labels = _labels(gt, predictions)
        if len(scores) == 0:
            continue
        precision, recall, _ = precision_recall_curve(scores, labels, len(gt))
        ax.plot(recall, precision, label=label)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall")
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def score_histogram(title: str, gt, predictions, threshold: float | None) -> str:
    scores, labels = _labels(gt, predictions)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    bins = np.linspace(scores.min(), scores.max(), 40) if len(scores) else 10
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label="non-matching", color="#c44")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label="true copies", color="#393")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"90% precision: {threshold:.3f}")
    ax.set(xlabel="score", ylabel="pairs", title=title)
    ax.legend(fontsize=8)
    return _png(fig)


def thumbnail(path: str | Path | None, size: int = 200) -> str:
    if not path:
        return ""
    try:
        image = load_image(path)
    except ImageError:
        return ""
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def worst_misses(result: DiscResult, n: int = 8, codec: str = "Flat") -> list[dict]:
    """Ground-truth queries whose top match is wrong, most confident wrong match first."""
    row = result.row(codec, normalised=False)
    if row is None:
        return []
    by_query: dict[str, list[Prediction]] = defaultdict(list)
    for p in result.predictions[(row.codec, row.score_norm)]:
        by_query[p.query].append(p)
    misses = []
    for pair in result.gt:
        preds = sorted(by_query.get(pair.query, []), key=lambda p: -p.score)
        top = preds[0] if preds else None
        if top is not None and top.reference == pair.reference:
            continue
        true_score = next((p.score for p in preds if p.reference == pair.reference), None)
        misses.append({"query": pair.query, "reference": pair.reference, "top": top, "true_score": true_score})
    misses.sort(key=lambda m: -(m["top"].score if m["top"] else -np.inf))
    return misses[:n]


def _paths(result: DiscResult) -> dict[str, str]:
    return {i: p for emb in result.embeddings.values() for i, p in zip(emb.ids, emb.paths, strict=False)}


def _metrics_table(results: list[DiscResult]) -> str:
    head = "<tr><th>model</th><th>codec</th><th>score norm</th><th>µAP</th><th>Acc@1</th><th>R@P90</th><th>threshold@P90</th><th>R@10</th><th>images/s</th></tr>"
    rows = []
    for res in results:
        for r in res.rows:
            m = r.metrics
            fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
            ips = "–" if res.images_per_second is None else f"{res.images_per_second:.1f}"
            rows.append(
                f"<tr><td>{html.escape(res.model)}</td><td>{r.codec}</td><td>{r.score_norm}</td>"
                f"<td>{fmt(m.average_precision)}</td><td>{fmt(m.recall_at_rank1)}</td>"
                f"<td>{fmt(m.recall_at_p90)}</td><td>{fmt(m.threshold_at_p90)}</td>"
                f"<td>{fmt(m.recall_at_rank10)}</td><td>{ips}</td></tr>"
            )
    return f"<table>{head}{''.join(rows)}</table>"


def _gallery(result: DiscResult, n: int) -> str:
    paths = _paths(result)
    blocks = []
    for miss in worst_misses(result, n):
        top = miss["top"]
        true_score = "not in top-k" if miss["true_score"] is None else f"{miss['true_score']:.3f}"
        figures = [
            f"<figure><img src='{thumbnail(paths.get(miss['query']))}'>query {miss['query']}</figure>",
            f"<figure><img src='{thumbnail(paths.get(miss['reference']))}'>"
            f"<span class='good'>true {miss['reference']} ({true_score})</span></figure>",
        ]
        if top is not None:
            figures.append(
                f"<figure><img src='{thumbnail(paths.get(top.reference))}'>"
                f"<span class='bad'>top match {top.reference} ({top.score:.3f})</span></figure>"
            )
        blocks.append(f"<div class='miss'>{''.join(figures)}</div>")
    return "".join(blocks) or "<p>No misses: every matched query's top result is its reference.</p>"


def write_report(
    results: list[DiscResult], path: str | Path, title: str = "copydistill evaluation",
    intro: str = "", gallery_size: int = 8,
) -> Path:
    """One HTML page for one or several models evaluated on the same benchmark."""
    path = Path(path)
    curves = []
    for res in results:
        for r in res.rows:
            if r.codec == "Flat":
                curves.append((f"{res.model} ({r.score_norm})", res.gt, res.predictions[(r.codec, r.score_norm)]))
    parts = [f"<h1>{html.escape(title)}</h1>", intro, "<h2>Metrics</h2>", _metrics_table(results),
             "<p>µAP, Acc@1 and R@P90 as defined by ISC2021 (pessimistic ties, |GT| denominator). "
             "Score norm 1.00[0,2]: SSCD's, minus the mean of the top-3 similarities to the train split.</p>",
             f"<h2>Precision-recall</h2><img src='{pr_curves(curves)}'>"]
    for res in results:
        parts.append(f"<h2>{html.escape(res.model)}</h2>")
        for r in res.rows:
            if r.codec != "Flat":
                continue
            parts.append(
                f"<img src='{score_histogram(f'{res.model}, score norm {r.score_norm}', res.gt, res.predictions[(r.codec, r.score_norm)], r.metrics.threshold_at_p90)}'>"
            )
        parts.append(f"<h3>Worst misses ({html.escape(res.model)})</h3>{_gallery(res, gallery_size)}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    atomic_write_text(path, page)
    return path
