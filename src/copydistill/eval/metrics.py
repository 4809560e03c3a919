"""ISC2021 metrics, re-implemented from their definitions (method.md §5).

* µAP (§5.2): all predictions of all queries in one list sorted by decreasing score, ties broken
  pessimistically (negatives first), step AP with |GT| in the denominator.
* R@P90 (§5.3): the largest recall among prefixes with precision >= 0.9 (first index on ties),
  with the score threshold at that prefix; ``None`` when no prefix reaches it.
* Recall at rank k (§5.4): per ground-truth pair, rank = number of that query's predictions with a
  score >= the score of the first correct prediction, minus one; 2**35 when never predicted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from copydistill.data.disc import GroundTruthPair
from copydistill.errors import CopydistillError

NOT_FOUND_RANK = 2**35


@dataclass(frozen=True)
class Prediction:
    query: str
    reference: str
    score: float


@dataclass(frozen=True)
class Metrics:
    """The numbers of one evaluation. ``recall_at_p90`` and its threshold are None if unreachable."""

    average_precision: float
    recall_at_p90: float | None
    threshold_at_p90: float | None
    recall_at_rank1: float
    recall_at_rank10: float
    num_predictions: int
    num_gt: int

    def as_dict(self) -> dict:
        return asdict(self)


class DuplicatePredictionError(CopydistillError):
    pass


def label_predictions(gt: Sequence[GroundTruthPair], predictions: Sequence[Prediction]) -> np.ndarray:
    """True where a prediction is a ground-truth pair."""
    positives = {(g.query, g.reference) for g in gt}
    return np.fromiter(
        ((p.query, p.reference) in positives for p in predictions), dtype=bool, count=len(predictions)
    )


def check_no_duplicates(predictions: Iterable[Prediction]) -> None:
    seen: set[tuple[str, str]] = set()
    for p in predictions:
        key = (p.query, p.reference)
        if key in seen:
            raise DuplicatePredictionError(
                f"duplicate prediction for query {p.query} and reference {p.reference}; "
                "each (query, reference) pair may be predicted once (ISC2021 rule)"
            )
        seen.add(key)


def sort_pessimistic(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices ordering by decreasing score; among equal scores negatives come first (§5.2)."""
    ascending = np.lexsort((~labels, scores))  # primary: score, secondary: not-label
    return ascending[::-1]


def precision_recall_curve(
    scores: np.ndarray, labels: np.ndarray, num_gt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-prefix precision, recall and the score of the last item of each prefix."""
    order = sort_pessimistic(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool))
    sorted_labels = labels[order]
    true_positives = np.cumsum(sorted_labels)
    ranks = np.arange(1, len(sorted_labels) + 1)
    precision = true_positives / ranks
    recall = true_positives / num_gt if num_gt > 0 else np.zeros_like(precision)
    return precision, recall, np.asarray(scores, dtype=np.float64)[order]


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Step AP = sum_i (recall_i - recall_{i-1}) * precision_i with recall_0 = 0 (§5.2)."""
    if len(recall) == 0:
        return 0.0
    deltas = np.diff(recall, prepend=0.0)
    if np.any(deltas < 0):
        raise ValueError("recall must be non-decreasing")
    return float(np.sum(deltas * precision))


def operating_point(
    precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray, required_precision: float
) -> tuple[float | None, float | None]:
    """(recall, threshold) at the largest recall whose precision >= required; first on ties."""
    valid = np.flatnonzero(precision >= required_precision)
    if len(valid) == 0:
        return None, None
    best = valid[np.argmax(recall[valid])]  # argmax returns the first maximum
    return float(recall[best]), float(thresholds[best])


def recall_at_ranks(
    gt: Sequence[GroundTruthPair], predictions: Sequence[Prediction], ks: Sequence[int] = (1, 10)
) -> dict[int, float]:
    by_query: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_query[p.query].append(p)
    ranks = []
    for pair in gt:
        preds = by_query.get(pair.query)
        rank = NOT_FOUND_RANK
        if preds:
            match = next((p for p in preds if p.reference == pair.reference), None)
            if match is not None:
                rank = sum(1 for p in preds if p.score >= match.score) - 1
        ranks.append(rank)
    ranks_arr = np.asarray(ranks, dtype=np.int64)
    if len(ranks_arr) == 0:
        return {k: 0.0 for k in ks}
    return {k: float(np.mean(ranks_arr < k)) for k in ks}


def evaluate(gt: Sequence[GroundTruthPair], predictions: Sequence[Prediction]) -> Metrics:
    """All ISC2021 metrics of ``predictions`` against ``gt`` (pairs with a reference only)."""
    check_no_duplicates(predictions)
    gt = [g for g in gt if g.reference]
    labels = label_predictions(gt, predictions)
    scores = np.fromiter((p.score for p in predictions), dtype=np.float64, count=len(predictions))
    precision, recall, thresholds = precision_recall_curve(scores, labels, len(gt))
    ap = average_precision(recall, precision) if gt else 0.0
    r_p90, t_p90 = operating_point(precision, recall, thresholds, 0.9)
    recalls = recall_at_ranks(gt, predictions, (1, 10))
    return Metrics(
        average_precision=ap,
        recall_at_p90=r_p90,
        threshold_at_p90=t_p90,
        recall_at_rank1=recalls[1],
        recall_at_rank10=recalls[10],
        num_predictions=len(predictions),
        num_gt=len(gt),
    )
