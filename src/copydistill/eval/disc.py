"""DISC21-protocol evaluation of one Descriptor (method.md §4.1, §5).

Embeds queries, references and (when present) the train split, matches with FAISS kNN (k = 10) or
the ISC global candidate cap, and scores every (codec, score normalisation) combination: ``Flat``
always, ``PCAW{d},L2norm,Flat`` with ``codec=True``; no normalisation always, SSCD's
``1.00[0,2]`` (or ISC's) when a train split exists. Everything lands in ``out``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from copydistill.data.disc import DiscLayout, GroundTruthPair, disc_records, read_ground_truth
from copydistill.errors import CopydistillError
from copydistill.eval.embed import OnError, embed_records
from copydistill.eval.matching import (
    PCAWhitening,
    global_predictions,
    isc_score_bias,
    knn_predictions,
    sscd_score_bias,
)
from copydistill.eval.metrics import Metrics, Prediction, evaluate
from copydistill.eval.predictions import write_predictions
from copydistill.io.atomic import atomic_write_text, ensure_dir
from copydistill.io.embeddings import Embeddings
from copydistill.models.descriptor import Descriptor

ScoreNorm = Literal["sscd", "isc", "none"]


@dataclass
class MetricsRow:
    codec: str
    score_norm: str
    metrics: Metrics
    predictions_file: str

    def flat(self) -> dict:
        return {"codec": self.codec, "score_norm": self.score_norm, **self.metrics.as_dict(),
                "predictions_file": self.predictions_file}


@dataclass
class DiscResult:
    model: str
    rows: list[MetricsRow]
    images_per_second: float | None
    counts: dict[str, int]
    skipped: int
    out: Path
    predictions: dict[tuple[str, str], list[Prediction]] = field(default_factory=dict, repr=False)
    embeddings: dict[str, Embeddings] = field(default_factory=dict, repr=False)
    gt: list[GroundTruthPair] = field(default_factory=list, repr=False)

    def row(self, codec: str = "Flat", normalised: bool = False) -> MetricsRow | None:
        for r in self.rows:
            if r.codec == codec and (r.score_norm != "None") == normalised:
                return r
        return None

    def summary(self) -> dict:
        """The headline numbers: µAP, µAP_SN, Acc@1, R@P90 (Flat codec), images/s."""
        plain, normed = self.row("Flat", False), self.row("Flat", True)
        return {
            "model": self.model,
            "uAP": plain.metrics.average_precision if plain else None,
            "uAP_SN": normed.metrics.average_precision if normed else None,
            "acc@1": plain.metrics.recall_at_rank1 if plain else None,
            "R@P90": plain.metrics.recall_at_p90 if plain else None,
            "R@P90_SN": normed.metrics.recall_at_p90 if normed else None,
            "threshold@P90": plain.metrics.threshold_at_p90 if plain else None,
            "images/s": self.images_per_second,
        }


def _norm_label(kind: ScoreNorm) -> str:
    return {"sscd": "1.00[0,2]", "isc": "isc:2.0x10th", "none": "None"}[kind]


def _check_ground_truth(gt, layout: DiscLayout, listed: dict) -> None:
    """Refuse a ground truth that names none of the queries and references listed."""
    queries = {r.id for r in listed["queries"]}
    references = {r.id for r in listed["references"]}
    if gt and not any(p.query in queries and p.reference in references for p in gt):
        raise CopydistillError(
            f"{layout.ground_truth}: none of its {len(gt)} pairs names a query of {layout.queries} "
            f"and a reference of {layout.references}; is it this dataset's ground truth?"
        )


def evaluate_disc(
    layout: DiscLayout,
    descriptor: Descriptor,
    out: str | Path,
    k: int = 10,
    score_norm: ScoreNorm = "sscd",
    codec: bool = False,
    codec_dims: int | None = None,
    max_results: int | None = None,
    on_error: OnError = "skip",
    progress: bool = True,
    embed: Callable[..., Embeddings | None] = embed_records,
) -> DiscResult | None:
    """Evaluate ``descriptor`` on ``layout``; writes embeddings, predictions and metrics to ``out``.

    ``embed`` embeds each split (``embed_records``' signature), e.g. a partial of
    ``embed_records_distributed``; when it returns None (a helper rank of a distributed run)
    this returns None once every split is embedded, leaving the evaluation to rank 0.
    """
    out = Path(out)
    ensure_dir(out)
    splits = {"queries": layout.queries, "references": layout.references}
    if layout.train is not None:
        splits["train"] = layout.train
    listed = {split: disc_records(folder) for split, folder in splits.items()}
    gt = read_ground_truth(layout.ground_truth)  # a wrong file fails before any embedding
    _check_ground_truth(gt, layout, listed)
    embeddings: dict[str, Embeddings] = {}
    counted, seconds, skipped, helper_rank = 0, 0.0, 0, False
    for split, folder in splits.items():
        records = listed[split]
        cache = out / "embeddings" / split
        cached = (cache / "embeddings.npz").is_file()
        start = time.perf_counter()
        embedded = embed(
            descriptor, records, cache, on_error=on_error, desc=f"{descriptor.name} {split}",
            progress=progress,
        )
        if embedded is None:
            helper_rank = True
            continue
        embeddings[split] = embedded
        if not cached:
            counted += len(records)
            seconds += time.perf_counter() - start
        skipped += len(records) - len(embedded)
    if helper_rank:
        return None
    if len(embeddings["references"]) == 0:
        raise CopydistillError(f"{layout.references}: no usable reference images")

    codecs: list[tuple[str, PCAWhitening | None]] = [("Flat", None)]
    if codec:
        if "train" not in embeddings:
            raise CopydistillError("--codec needs a train split to fit the PCA whitening on")
        dims = codec_dims or descriptor.dims
        dims = min(dims, len(embeddings["train"]) - 1, descriptor.dims)
        whitening = PCAWhitening(dims).fit(embeddings["train"].vectors)
        codecs.append((whitening.factory, whitening))
    norms: list[ScoreNorm] = ["none"] + ([score_norm] if score_norm != "none" and "train" in embeddings else [])

    rows, all_predictions = [], {}
    for codec_name, transform in codecs:
        q, r = embeddings["queries"], embeddings["references"]
        t = embeddings.get("train")
        if transform is not None:
            q, r, t = transform.transform(q), transform.transform(r), transform.transform(t)
        for norm in norms:
            bias = None
            if norm == "sscd":
                bias = sscd_score_bias(q.vectors, t.vectors)
            elif norm == "isc":
                bias = isc_score_bias(q.vectors, t.vectors)
            if max_results:
                predictions = global_predictions(q, r, max_results, bias)
            else:
                predictions = knn_predictions(q, r, k, bias)
            # scores as the CSV stores them (6 decimals), so the official scorer run on our
            # predictions file gives exactly the numbers we report
            predictions = [Prediction(p.query, p.reference, round(p.score, 6)) for p in predictions]
            label = _norm_label(norm)
            file = f"predictions_{codec_name.replace(',', '_')}_{'sn' if norm != 'none' else 'raw'}.csv"
            write_predictions(out / file, predictions)
            rows.append(MetricsRow(codec_name, label, evaluate(gt, predictions), file))
            all_predictions[(codec_name, label)] = predictions

    result = DiscResult(
        model=descriptor.name,
        rows=rows,
        images_per_second=counted / seconds if seconds > 0 else None,
        counts={s: len(e) for s, e in embeddings.items()} | {"gt_pairs": len(gt)},
        skipped=skipped,
        out=out,
        predictions=all_predictions,
        embeddings=embeddings,
        gt=gt,
    )
    write_metrics(result)
    return result


def write_metrics(result: DiscResult) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["codec", "score_norm", "uAP", "accuracy-at-1", "recall-at-p90", "threshold-at-p90",
              "recall-at-10", "num_predictions", "num_gt"]
    writer.writerow(header)
    for r in result.rows:
        m = r.metrics
        writer.writerow([r.codec, r.score_norm, f"{m.average_precision:.5f}", f"{m.recall_at_rank1:.5f}",
                         f"{m.recall_at_p90 or 0.0:.5f}",
                         "" if m.threshold_at_p90 is None else f"{m.threshold_at_p90:.6f}",
                         f"{m.recall_at_rank10:.5f}", m.num_predictions, m.num_gt])
    atomic_write_text(result.out / "disc_metrics.csv", buffer.getvalue())
    payload = {
        "model": result.model,
        "summary": result.summary(),
        "counts": result.counts,
        "skipped_images": result.skipped,
        "rows": [r.flat() for r in result.rows],
    }
    atomic_write_text(result.out / "disc_metrics.json", json.dumps(payload, indent=1))


def format_table(summaries: list[dict]) -> str:
    """A plain-text table of summary dicts (one line per model)."""
    cols = ["model", "uAP", "uAP_SN", "acc@1", "R@P90", "images/s"]

    def fmt(v):
        if v is None:
            return "–"
        return f"{v:.4f}" if isinstance(v, float) and v <= 1.0 else (f"{v:.1f}" if isinstance(v, float) else str(v))

    cells = [[fmt(s.get(c)) for c in cols] for s in summaries]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)

