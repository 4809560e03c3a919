"""Calibrated score thresholds: the cosine at which a match is a copy with 90 % (99 %) precision.

``calibrate`` evaluates a model on a DISC-layout benchmark (raw scores, k = 10 per query: the
same scores ``index search`` prints) and takes the threshold of the R@P90 operating point
(method.md §5.3): every match scoring at or above it was a true copy at least 90 % of the time
on that benchmark. The 99 % point is computed the same way.

The result is stored "beside the model": ``<model file>.calibration.json`` for file models
(``onnx:``, ``torchscript:``) when that folder is writable, and always in the per-user store
``~/.cache/copydistill/calibration/<fingerprint hash>.json`` (``$COPYDISTILL_CACHE`` or
``$XDG_CACHE_HOME/copydistill`` move it), keyed by the model's fingerprint so built-in specs
such as ``sscd-int8`` work too. ``--threshold auto`` looks there and otherwise falls back to
:data:`DEFAULT_THRESHOLD` with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from copydistill.data.disc import DiscLayout
from copydistill.errors import CopydistillError
from copydistill.eval.metrics import label_predictions, operating_point, precision_recall_curve
from copydistill.io.atomic import atomic_write_text
from copydistill.models.descriptor import Descriptor, fingerprint_hash, vector_key
from copydistill.models.registry import model_file, normalise_spec

FORMAT = "copydistill-calibration/1"
DEFAULT_THRESHOLD = 0.75
"""Cosine 0.75 ≈ 90 % precision for SSCD descriptors on DISC21 (SSCD's documentation). A guess
for any other model: calibrate it."""
PRECISIONS = (0.9, 0.99)


def cache_root() -> Path:
    if os.environ.get("COPYDISTILL_CACHE"):
        return Path(os.environ["COPYDISTILL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "copydistill"


def store_path(fingerprint: dict) -> Path:
    return cache_root() / "calibration" / f"{fingerprint_hash(fingerprint)}.json"


def beside_model_path(spec: str) -> Path | None:
    path = model_file(spec)
    return path.with_name(path.name + ".calibration.json") if path is not None else None


@dataclass
class Calibration:
    spec: str
    fingerprint: dict
    thresholds: dict[str, float | None]  # "0.9" -> score threshold (None: not reached)
    recalls: dict[str, float | None]
    benchmark: str
    uAP: float
    num_queries: int
    num_references: int
    num_gt: int
    num_predictions: int
    k: int = 10
    created: str = ""
    format: str = FORMAT
    stored: list[str] = field(default_factory=list)

    def threshold(self, precision: float = 0.9) -> float | None:
        return self.thresholds.get(f"{precision:g}")

    def as_json(self) -> str:
        payload = asdict(self)
        payload.pop("stored")
        return json.dumps(payload, indent=1)

    @classmethod
    def read(cls, path: Path) -> Calibration | None:
        try:
            payload = json.loads(Path(path).read_text())
            if payload.get("format") != FORMAT:
                return None
            return cls(**payload, stored=[str(path)])
        except (OSError, ValueError, TypeError):
            return None


def calibrate(
    layout: DiscLayout,
    descriptor: Descriptor,
    spec: str | None = None,
    run_dir: str | Path | None = None,
    k: int = 10,
    on_error: str = "skip",
    progress: bool = True,
) -> Calibration:
    """Measure the 90 % / 99 % precision thresholds of ``descriptor`` on a DISC-layout benchmark.

    Raw scores only (no score normalisation: search does not normalise), so the train split is
    not embedded. With ``run_dir`` the embeddings and predictions are kept there (and reused).
    """
    from copydistill.eval.disc import evaluate_disc

    layout = dataclasses.replace(layout, train=None)
    with tempfile.TemporaryDirectory(prefix="copydistill-calibrate-") as tmp:
        result = evaluate_disc(layout, descriptor, run_dir or tmp, k=k, score_norm="none",
                               on_error=on_error, progress=progress)
    row = result.row("Flat", normalised=False)
    predictions = result.predictions[(row.codec, row.score_norm)]
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    labels = label_predictions(result.gt, predictions)
    precision, recall, thresholds = precision_recall_curve(scores, labels, len(result.gt))
    points = {f"{p:g}": operating_point(precision, recall, thresholds, p) for p in PRECISIONS}
    calibration = Calibration(
        spec=normalise_spec(spec or descriptor.name),
        fingerprint=descriptor.fingerprint(),
        thresholds={key: t for key, (_, t) in points.items()},
        recalls={key: r for key, (r, _) in points.items()},
        benchmark=str(Path(layout.root).resolve()),
        uAP=row.metrics.average_precision,
        num_queries=result.counts["queries"],
        num_references=result.counts["references"],
        num_gt=len(result.gt),
        num_predictions=len(predictions),
        k=k,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if calibration.threshold(0.9) is None:
        raise CopydistillError(
            f"{layout.root}: {calibration.spec} never reaches 90 % precision on this benchmark "
            f"(µAP {calibration.uAP:.3f}), so there is no threshold to store; nothing was written. "
            "Calibrate a stronger model, or pass --threshold X explicitly."
        )
    return calibration


def save_calibration(calibration: Calibration) -> tuple[list[Path], list[str]]:
    """Write to the per-user store and, for file models, beside the model file when writable.

    Returns (paths written, warnings).
    """
    written, warnings = [], []
    text = calibration.as_json()
    beside = beside_model_path(calibration.spec)
    if beside is not None:
        try:
            atomic_write_text(beside, text)
            written.append(beside)
        except CopydistillError:
            warnings.append(f"{beside.parent} is not writable; calibration kept in the user store only")
    target = store_path(calibration.fingerprint)
    try:
        atomic_write_text(target, text)
    except CopydistillError as err:
        if not written:
            raise CopydistillError(
                f"cannot store the calibration: {err}. Set COPYDISTILL_CACHE to a writable folder."
            ) from err
        warnings.append(f"cannot write the user store {target}: {err}")
    else:
        written.append(target)
    calibration.stored = [str(p) for p in written]
    return written, warnings


def find_calibration(spec: str, fingerprint: dict) -> Calibration | None:
    """The stored calibration of these exact weights/dims/resize (beside the model, then the store)."""
    candidates = [beside_model_path(normalise_spec(spec)), store_path(fingerprint)]
    for path in filter(None, candidates):
        if path.is_file():
            found = Calibration.read(path)
            if found is not None and vector_key(found.fingerprint) == vector_key(fingerprint):
                return found
    return None


@dataclass
class Threshold:
    value: float | None
    source: str  # a short human explanation, printed with the results
    warning: str | None = None


def resolve_threshold(text: str | None, spec: str, fingerprint: dict) -> Threshold:
    """``None`` (no threshold), a number, ``auto`` (90 % precision) or ``auto99`` (99 %)."""
    if text is None:
        return Threshold(None, "no threshold: the k best matches of every query")
    if text in ("auto", "auto99"):
        precision = 0.99 if text == "auto99" else 0.9
        found = find_calibration(spec, fingerprint)
        value = found.threshold(precision) if found else None
        if value is not None:
            return Threshold(value, f"calibrated threshold {value:.4f} ({precision:.0%} precision on "
                                    f"{found.benchmark}, stored in {found.stored[0]})")
        if precision == 0.99:
            reason = "no calibration" if found is None else "its calibration never reached 99 % precision"
            raise CopydistillError(
                f"--threshold auto99: {reason} for {spec}. Run `copydistill calibrate --data "
                f"DISC_LAYOUT_DIR --model {spec}` first, or pass a number."
            )
        return Threshold(
            DEFAULT_THRESHOLD,
            f"default threshold {DEFAULT_THRESHOLD} (SSCD: cosine 0.75 ≈ 90 % precision on DISC)",
            f"no calibration stored for {spec}; using the default threshold {DEFAULT_THRESHOLD} "
            "(right for SSCD-like descriptors, a guess for others). Run `copydistill calibrate "
            f"--data DISC_LAYOUT_DIR --model {spec}` to measure this model's.",
        )
    try:
        value = float(text)
    except ValueError as err:
        raise CopydistillError(
            f"--threshold {text!r}: use auto, auto99 or a number (a cosine score, e.g. 0.75)"
        ) from err
    if not np.isfinite(value):
        raise CopydistillError(f"--threshold {text!r} is not a finite number")
    return Threshold(value, f"threshold {value:g} (given)")
