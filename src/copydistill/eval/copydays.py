"""Copydays (+ distractors, "CD10K") evaluation (method.md §4.2).

Index: the originals plus optional distractors, after an optional ``PCAW{d},L2norm,Flat`` codec
trained on a separate whitening folder. Every Copydays image is a query, k = 100. Reports the
``strong`` block's mAP and the overall µAP over all pooled (query, result) pairs, both with the
trapezoid rule of the original script, and per-block mAPs.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from copydistill.data.copydays import CopydaysImage, CopydaysLayout
from copydistill.data.disc import disc_records
from copydistill.errors import CopydistillError
from copydistill.eval.embed import OnError, embed_records
from copydistill.io.embeddings import Embeddings
from copydistill.io.records import ImageRecord
from copydistill.eval.matching import PCAWhitening, knn_search
from copydistill.io.atomic import atomic_write_text
from copydistill.models.descriptor import Descriptor


def trapezoid_ap(ranked_positive: list[bool] | np.ndarray, num_positives: int) -> float:
    """AP with the trapezoid rule over ranks (§4.2): each positive at 0-based rank r with t
    positives before it adds (1/npos)·½·(P_left + P_right), P_left = 1 if r = 0 else t/r,
    P_right = (t+1)/(r+1)."""
    if num_positives == 0:
        return 0.0
    ap, found = 0.0, 0
    for rank, positive in enumerate(ranked_positive):
        if positive:
            left = 1.0 if rank == 0 else found / rank
            right = (found + 1) / (rank + 1)
            ap += 0.5 * (left + right) / num_positives
            found += 1
    return ap


def copydays_metrics(
    layout: CopydaysLayout, queries: list[CopydaysImage], query_vectors: np.ndarray,
    index_ids: list[str], index_vectors: np.ndarray, k: int = 100,
) -> dict:
    """Metrics of ``queries`` (those that could be embedded); positives come from the full layout,
    so a copy whose original is missing from the index counts as a miss."""
    sims, idx = knn_search(query_vectors, index_vectors, k)
    per_block: dict[str, list[float]] = {}
    pooled: list[tuple[float, bool]] = []
    for qi, query in enumerate(queries):
        positives = layout.positives(query)
        ranked = [index_ids[j] in positives for j in idx[qi] if j >= 0]
        per_block.setdefault(query.block, []).append(trapezoid_ap(ranked, len(positives)))
        pooled += [(float(s), hit) for s, hit, j in zip(sims[qi], ranked, idx[qi], strict=False) if j >= 0]
    pooled.sort(key=lambda x: (-x[0], x[1]))  # ties: negatives first
    overall = trapezoid_ap([hit for _, hit in pooled], len(queries))
    block_map = {b: float(np.mean(v)) for b, v in per_block.items()}
    return {"strong_mAP": block_map.get("strong", float("nan")), "overall_uAP": overall,
            "block_mAP": block_map}


def evaluate_copydays(
    root: str | Path, descriptor: Descriptor, out: str | Path, distractors: Path | None = None,
    whitening: Path | None = None, codec_dims: int | None = None, k: int = 100,
    on_error: OnError = "skip",
) -> list[dict]:
    layout = CopydaysLayout.find(root)
    out = Path(out)
    queries = embed_records(
        descriptor, [ImageRecord(q.id, q.path) for q in layout.queries], out / "embeddings" / "copydays",
        on_error=on_error, desc="copydays",
    )
    by_id = dict(zip(queries.ids, queries.vectors, strict=True))
    kept_queries = [q for q in layout.queries if q.id in by_id]
    kept_originals = [o for o in layout.originals if o.id in by_id]
    if not kept_originals:
        raise CopydistillError(f"{layout.root / 'original'}: no original could be decoded")
    index = Embeddings([o.id for o in kept_originals], np.stack([by_id[o.id] for o in kept_originals]))
    if distractors is not None:
        extra = embed_records(descriptor, disc_records(distractors), out / "embeddings" / "distractors",
                              on_error=on_error, desc="distractors")
        index = Embeddings(index.ids + [f"distractor/{i}" for i in extra.ids],
                           np.concatenate([index.vectors, extra.vectors]))
    query_vectors = np.stack([by_id[q.id] for q in kept_queries])
    rows = [{"codec": "Flat", **copydays_metrics(layout, kept_queries, query_vectors, index.ids,
                                                  index.vectors, k)}]
    if whitening is not None:
        train = embed_records(descriptor, disc_records(whitening), out / "embeddings" / "whitening",
                              on_error=on_error, desc="whitening")
        dims = min(descriptor.dims if codec_dims is None else codec_dims, descriptor.dims)
        if len(train) <= dims:
            raise CopydistillError(
                f"{whitening}: {len(train)} whitening images are too few for a {dims}-d PCA "
                f"whitening; use more than {dims} images or a smaller --codec-dims"
            )
        codec = PCAWhitening(dims).fit(train.vectors)
        rows.append({"codec": codec.factory, **copydays_metrics(
            layout, kept_queries, codec.apply(query_vectors), index.ids, codec.apply(index.vectors), k)})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["codec", "strong_mAP", "overall_uAP"])
    for row in rows:
        writer.writerow([row["codec"], f"{row['strong_mAP']:.5f}", f"{row['overall_uAP']:.5f}"])
    atomic_write_text(out / "copydays_metrics.csv", buffer.getvalue())
    atomic_write_text(out / "copydays_metrics.json", json.dumps({"model": descriptor.name, "rows": rows}, indent=1))
    return rows
