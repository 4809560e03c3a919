"""``skipped.tsv``: the files a run could not use, ``path<TAB>reason`` per line.

Written and read with the ``csv`` module (tab-separated, quoted only where needed), so a file
name holding a tab, a newline or a quote still makes exactly one row naming the real file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from copydistill.io.atomic import atomic_write_text


def format_skip_list(rows) -> str:
    """``rows``: (path, reason) pairs, or a {path: reason} dict."""
    items = rows.items() if isinstance(rows, dict) else rows
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator="\n").writerows((str(p), r) for p, r in items)
    return buffer.getvalue()


def write_skip_list(path: str | Path, rows) -> None:
    atomic_write_text(path, format_skip_list(rows))


def read_skip_list(path: str | Path) -> dict[str, str]:
    """{path: reason} of a skip list; {} when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t") if row]
    return {row[0]: (row[1] if len(row) > 1 else "") for row in rows}
