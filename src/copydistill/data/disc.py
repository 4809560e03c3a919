"""DISC21 as users have it (method.md §6), with SSCD's folder names as overrides.

Default layout (the official download)::

    ROOT/images/{train,references,dev_queries,final_queries}/   Q00000.jpg, R000000.jpg, T000000.jpg
    ROOT/dev_ground_truth.csv  (or public_ground_truth.csv)       query_id,reference_id (empty = no match)

SSCD's evaluation layout (``val_query``, ``val_ref``, ``training``,
``val_groundtruth_matches.csv``) is detected automatically; any folder or file can be overridden.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from copydistill.errors import DataLayoutError
from copydistill.io.atomic import atomic_write
from copydistill.io.records import ImageRecord, folder_records

ID_PATTERN = re.compile(r"^([QRT])(\d+)$")
ID_WIDTH = {"Q": 5, "R": 6, "T": 6}

OFFICIAL = {
    "queries": "images/dev_queries",
    "references": "images/references",
    "train": "images/train",
    "ground_truth": ("dev_ground_truth.csv", "public_ground_truth.csv", "gt.csv"),
}
SSCD = {
    "queries": "val_query",
    "references": "val_ref",
    "train": "training",
    "ground_truth": ("val_groundtruth_matches.csv",),
}


def canonical_id(stem: str) -> str:
    """Re-format a DISC id with its zero padding (``Q12`` -> ``Q00012``), as SSCD does (§6).

    Stems that are not DISC ids are returned unchanged.
    """
    match = ID_PATTERN.match(stem)
    if not match:
        return stem
    prefix, digits = match.groups()
    return f"{prefix}{int(digits):0{ID_WIDTH[prefix]}d}"


@dataclass(frozen=True)
class GroundTruthPair:
    query: str
    reference: str


def isc_image_names(ids: list[str]) -> list[str]:
    """ISC2021 descriptor names for folder ids: the DISC id of ``R000001.jpg`` is ``R000001``;
    other ids lose their extension only (``2024/IMG_0001``). Refuses names that would collide."""
    names = [canonical_id(PurePosixPath(i).with_suffix("").as_posix()) for i in ids]
    seen: dict[str, str] = {}
    for name, rid in zip(names, ids, strict=True):
        if name in seen:
            raise DataLayoutError(
                f"--hdf5: {seen[name]} and {rid} would both be named {name} in the ISC file; "
                "rename one, or leave out --hdf5"
            )
        seen[name] = rid
    return names


def disc_records(folder: Path) -> list[ImageRecord]:
    """Image records of a DISC split: ``folder_records`` with each id replaced by the canonical
    DISC id of the file's stem (what the ground truth names). Refuses two files with one id."""
    records = [ImageRecord(canonical_id(PurePosixPath(r.id).stem), r.path) for r in folder_records(folder)]
    seen: dict[str, Path] = {}
    for r in records:
        if r.id in seen:
            raise DataLayoutError(
                f"{folder}: two files share the id {r.id} ({seen[r.id].name} and {r.path.name}); "
                "ids are file stems and must be unique"
            )
        seen[r.id] = r.path
    return records


def read_ground_truth(path: str | Path) -> list[GroundTruthPair]:
    """Read ``query_id,reference_id`` rows; rows with an empty reference (no match) are dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"{path}: ground-truth CSV not found")
    pairs = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or (line_no == 1 and row[0].strip().lower() == "query_id"):
                continue
            if len(row) < 2:
                raise DataLayoutError(
                    f"{path}:{line_no}: expected 'query_id,reference_id', got {','.join(row)!r}"
                )
            query, reference = row[0].strip(), row[1].strip()
            if reference:
                pairs.append(GroundTruthPair(canonical_id(query), canonical_id(reference)))
    return pairs


def write_ground_truth(path: str | Path, rows: list[tuple[str, str | None]]) -> None:
    """Write the DISC ground-truth CSV; ``None`` references are written empty."""
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["query_id", "reference_id"])
        for query, reference in rows:
            writer.writerow([query, reference or ""])


@dataclass(frozen=True)
class DiscLayout:
    """Where the splits of a DISC-style dataset are. ``train`` may be None (no background set)."""

    root: Path
    queries: Path
    references: Path
    train: Path | None
    ground_truth: Path

    @classmethod
    def find(
        cls,
        root: str | Path,
        queries: str | None = None,
        references: str | None = None,
        train: str | None = None,
        ground_truth: str | None = None,
    ) -> DiscLayout:
        """Locate the splits under ``root`` (official or SSCD names), honouring overrides."""
        root = Path(root)
        if not root.is_dir():
            raise DataLayoutError(f"{root}: dataset folder not found")
        names = SSCD if (root / SSCD["queries"]).is_dir() else OFFICIAL

        def folder(override: str | None, default: str, required: bool) -> Path | None:
            path = root / (override or default)
            if path.is_dir():
                return path
            if required or override:
                raise DataLayoutError(
                    f"{path}: folder not found. Expected the DISC21 layout "
                    "(images/dev_queries, images/references, images/train, dev_ground_truth.csv) "
                    "or SSCD's (val_query, val_ref, training, val_groundtruth_matches.csv); "
                    "override a folder with --queries/--references/--train."
                )
            return None

        gt_path = None
        if ground_truth:
            gt_path = root / ground_truth
        else:
            gt_path = next(
                (root / n for n in names["ground_truth"] if (root / n).is_file()),
                root / names["ground_truth"][0],
            )
        if not gt_path.is_file():
            raise DataLayoutError(f"{gt_path}: ground-truth CSV not found; pass --ground-truth")
        return cls(
            root=root,
            queries=folder(queries, names["queries"], True),
            references=folder(references, names["references"], True),
            train=folder(train, names["train"], False),
            ground_truth=gt_path,
        )
