"""Output formats of search results and dedup groups: a table for people, JSON and CSV for tools."""

from __future__ import annotations

import csv
import io
import json


def _csv_text(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def format_search(result, fmt: str, threshold) -> str:
    ordered = result.sorted()
    if fmt == "json":
        payload = {
            "k": result.k,
            "threshold": threshold.value,
            "threshold_source": threshold.source,
            "normalisation": result.normalisation or None,
            "queries": [
                {"query": q.query, "matches": [
                    {"rank": m.rank, "reference": m.reference, "path": m.path,
                     "score": round(m.score, 6)}
                    | ({} if m.raw_score is None else {"raw_score": round(m.raw_score, 6)})
                    for m in q.matches]}
                for q in ordered
            ],
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped.items()],
        }
        return json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    if fmt == "csv":
        rows = [["query", "rank", "reference", "score", "reference_path"]]
        rows += [[q.query, m.rank, m.reference, f"{m.score:.6f}", m.path] for q in ordered for m in q.matches]
        return _csv_text(rows)
    lines = []
    width = max([len("query"), *(len(q.query) for q in ordered if q.matches)])
    lines.append(f"{'query':<{width}}  {'rank':>4}  {'score':>7}  reference")
    for q in ordered:
        for m in q.matches:
            label = q.query if m.rank == 1 else ""
            lines.append(f"{label:<{width}}  {m.rank:>4}  {m.score:>7.4f}  {m.path}")
    matched = sum(1 for q in result.queries if q.matches)
    norm = f"; {result.normalisation}" if result.normalisation else ""
    lines.append(f"{len(result.queries)} queries, {matched} with matches; {threshold.source}{norm}")
    return "\n".join(lines) + "\n"


def format_dedup(result, fmt: str, threshold) -> str:
    if fmt == "json":
        payload = {
            "folder": result.folder, "images": result.images, "threshold": threshold.value,
            "threshold_source": threshold.source,
            "normalisation": result.normalisation or None,
            "groups": [
                {"group": g, "size": group.size,
                 "members": [{"path": m.path, "best_score": round(m.best_score, 6),
                              "score_to_first": round(m.score_to_first, 6), "exact_of": m.exact_of}
                             for m in group.members],
                 "pairs": [{"a": a, "b": b, "score": round(s, 6)} for a, b, s in group.pairs]}
                for g, group in enumerate(result.groups, start=1)
            ],
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped.items()],
        }
        return json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    if fmt == "csv":
        rows = [["group", "path", "best_score", "score_to_first", "exact_of"]]
        rows += [[g, m.path, f"{m.best_score:.6f}", f"{m.score_to_first:.6f}", m.exact_of or ""]
                 for g, group in enumerate(result.groups, start=1) for m in group.members]
        return _csv_text(rows)
    lines = []
    for g, group in enumerate(result.groups, start=1):
        lines.append(f"group {g}: {group.size} images (strongest link {group.max_score:.4f})")
        for m in group.members:
            exact = f"  exact copy of {m.exact_of}" if m.exact_of else ""
            lines.append(f"  {m.best_score:.4f}  {m.path}{exact}")
    norm = f"; {result.normalisation}" if result.normalisation else ""
    lines.append(f"{result.images} images, {len(result.groups)} groups of copies, {result.duplicates} "
                 f"images duplicate another; {threshold.source}{norm}")
    return "\n".join(lines) + "\n"
