"""Predictions CSV in the ISC2021 track-1 format (method.md §6)."""

from __future__ import annotations

import csv
from pathlib import Path

from copydistill.errors import DataLayoutError
from copydistill.eval.metrics import Prediction
from copydistill.io.atomic import atomic_write


def write_predictions(path: str | Path, predictions: list[Prediction]) -> None:
    """``query_id,reference_id,score`` with 6 decimals, best first, written atomically."""
    ordered = sorted(predictions, key=lambda p: (-p.score, p.query, p.reference))
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["query_id", "reference_id", "score"])
        for p in ordered:
            writer.writerow([p.query, p.reference, f"{p.score:.6f}"])


def read_predictions(path: str | Path) -> list[Prediction]:
    path = Path(path)
    predictions = []
    with open(path, newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or (line_no == 1 and row[0] == "query_id"):
                continue
            try:
                predictions.append(Prediction(row[0], row[1], float(row[2])))
            except (IndexError, ValueError) as err:
                raise DataLayoutError(
                    f"{path}:{line_no}: expected 'query_id,reference_id,score', got {row}"
                ) from err
    return predictions
