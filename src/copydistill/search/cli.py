"""Subcommands of the search tool: ``index build|add|search|info``, ``dedup``, ``calibrate``.

Parsing and printing only; the work is in ``index``, ``dedup``, ``calibrate`` and ``gallery``.
Results go to stdout (or ``--out FILE``, written atomically); notes and warnings to stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from copydistill import argtypes
from copydistill.errors import CopydistillError, ModelSpecError

FORMATS_HELP = "human-readable table (default), --json or --csv"


def _model_options(p: argparse.ArgumentParser, required: bool, help_text: str) -> None:
    p.add_argument("--model", required=required, default=None, metavar="SPEC", help=help_text)
    p.add_argument("--resize", type=argtypes.resize_policy, default=None, metavar="POLICY",
                   help="short:288 (SSCD's protocol), square:288, long:800 or none")
    p.add_argument("--batch-size", type=argtypes.positive, default=None)
    p.add_argument("--threads", type=argtypes.positive, default=None, help="CPU threads for ONNX Runtime")


def _on_error(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="images that cannot be used (unreadable, undecodable, too large): "
                        "skip them (listed) or stop")


def _output_options(p: argparse.ArgumentParser, gallery: str) -> None:
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable JSON")
    fmt.add_argument("--csv", action="store_true", help="machine-readable CSV")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write the results to FILE (atomically) instead of stdout")
    p.add_argument("--html", type=Path, default=None, metavar="OUT.html", help=gallery)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> dict:
    """Add the search subcommands to ``sub``; return {(command, subcommand): handler}."""
    index = sub.add_parser("index", help="a persistent reference index: build, add, search")
    isub = index.add_subparsers(dest="index_command", required=True)

    build = isub.add_parser("build", help="embed a folder of references into a new index")
    build.add_argument("refs", type=Path, metavar="REFS_DIR", help="folder of reference images (recursive)")
    _model_options(build, True, "model spec: sscd-int8, onnx:PATH, torchscript:PATH, resnet18, phash, ...")
    build.add_argument("--out", type=Path, required=True, metavar="INDEX_DIR", help="new index folder")
    build.add_argument("--index-factory", default="Flat", metavar="FACTORY",
                       help="FAISS factory string: Flat (exact, default), IVF4096,PQ32, ... "
                            "(see docs/search.md for memory per million references)")
    build.add_argument("--train-size", type=argtypes.positive, default=None, metavar="N",
                       help="vectors sampled to train IVF/PQ factories (default 100000)")
    build.add_argument("--nprobe", type=argtypes.positive, default=None, help="IVF lists visited per query (default 16)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    _on_error(build)

    add = isub.add_parser("add", help="add the new images of folders to an index (references untouched)")
    add.add_argument("index", type=Path, metavar="INDEX_DIR")
    add.add_argument("folders", type=Path, nargs="+", metavar="FOLDER")
    _model_options(add, False, "model spec (default: the index's own; must give the same vectors)")
    add.add_argument("--quiet", action="store_true", help="no progress bar")
    _on_error(add)

    search = isub.add_parser("search", help="find the references that queries copy")
    search.add_argument("index", type=Path, metavar="INDEX_DIR")
    search.add_argument("queries", type=Path, nargs="+", metavar="QUERY",
                        help="query images or folders of them (recursive)")
    search.add_argument("--k", type=argtypes.positive, default=10, help="matches per query before the threshold (10)")
    search.add_argument("--threshold", type=argtypes.threshold, default=None, metavar="auto|auto99|X",
                        help="keep matches scoring >= X; auto = the calibrated 90 %% precision "
                             "threshold (fallback 0.75 with a warning), auto99 = 99 %%")
    search.add_argument("--nprobe", type=argtypes.positive, default=None, help="IVF lists visited per query")
    _model_options(search, False, "model spec (default: the index's own; must give the same vectors)")
    _output_options(search, "also write an HTML gallery: each query beside its matches")
    _on_error(search)

    info = isub.add_parser("info", help="what an index holds: model, size, factory, calibration")
    info.add_argument("index", type=Path, metavar="INDEX_DIR")
    info.add_argument("--json", action="store_true")

    dedup = sub.add_parser("dedup", help="groups of copies inside one folder (transitive)")
    dedup.add_argument("folder", type=Path, metavar="DIR")
    _model_options(dedup, True, "model spec")
    dedup.add_argument("--threshold", type=argtypes.threshold, default="auto", metavar="auto|auto99|X",
                       help="link two images when their score >= X (default auto: calibrated, "
                            "else 0.75 with a warning)")
    dedup.add_argument("--cache", type=Path, default=None, metavar="DIR",
                       help="keep the embeddings here so an interrupted or repeated run resumes")
    _output_options(dedup, "also write an HTML gallery: each group's first image beside its copies")
    _on_error(dedup)

    cal = sub.add_parser("calibrate", help="measure a model's 90 %% / 99 %% precision thresholds")
    cal.add_argument("--data", type=Path, required=True, metavar="DISC_LAYOUT_DIR",
                     help="a DISC-layout benchmark (e.g. `copydistill data make-benchmark`)")
    _model_options(cal, True, "model spec")
    cal.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                     help="keep embeddings and predictions here (default: a temporary folder)")
    cal.add_argument("--k", type=argtypes.positive, default=10)
    for name in ("queries", "references", "ground-truth"):
        cal.add_argument(f"--{name}", default=None, help=f"override the {name} path (relative to --data)")
    cal.add_argument("--quiet", action="store_true", help="no progress bar")
    _on_error(cal)

    return {
        ("index", "build"): cmd_index_build,
        ("index", "add"): cmd_index_add,
        ("index", "search"): cmd_index_search,
        ("index", "info"): cmd_index_info,
        ("dedup", None): cmd_dedup,
        ("calibrate", None): cmd_calibrate,
    }


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _note(text: str) -> None:
    print(f"copydistill: {text}", file=sys.stderr)


def _warn(text: str) -> None:
    print(f"copydistill: warning: {text}", file=sys.stderr)


def check_output_file(path: Path | None, option: str) -> None:
    """Fail before any work when an output file cannot be written (nothing else is touched)."""
    if path is None:
        return
    if path.is_dir():
        raise CopydistillError(f"{option} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CopydistillError(
            f"cannot write {option} {path}: {err.strerror or err}. Choose a writable location."
        ) from err


def _descriptor(args, spec: str, resize: str | None = None):
    from copydistill.models import load_descriptor

    return load_descriptor(spec, resize=args.resize or resize, threads=args.threads,
                           batch_size=args.batch_size)


def _index_descriptor(args, ref_index):
    """The model of the index, or ``--model`` after checking it gives the same vectors."""
    info = ref_index.info
    if args.model is None:
        try:
            descriptor = _descriptor(args, info.spec, info.fingerprint.get("resize"))
        except ModelSpecError as err:
            raise CopydistillError(
                f"{ref_index.root}: cannot load the index's model {info.spec} ({err}); "
                "pass --model SPEC with the same weights"
            ) from err
        spec = info.spec
    else:
        descriptor = _descriptor(args, args.model, info.fingerprint.get("resize"))
        spec = args.model
    ref_index.check_descriptor(descriptor, spec)
    return descriptor, spec


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    else:
        from copydistill.io.atomic import atomic_write_text

        atomic_write_text(out, text)
        _note(f"results written to {out}")


def _csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _one_line(text: str) -> str:
    """A file name as one line: tabs and line breaks shown as \\t, \\n, \\r."""
    return text.translate({9: "\\t", 10: "\\n", 13: "\\r"})


def _skipped_note(skipped: dict[str, str], where: str) -> None:
    if skipped:
        _warn(f"{len(skipped)} {where}file(s) skipped: "
              + "; ".join(f"{_one_line(p)} ({r})" for p, r in list(skipped.items())[:3])
              + (" ..." if len(skipped) > 3 else ""))


# --------------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------------


def cmd_index_build(args) -> None:
    from copydistill.search.index import DEFAULT_NPROBE, MAX_TRAIN, SKIPPED_FILE, build_index

    descriptor = _descriptor(args, args.model)
    result = build_index(args.refs, descriptor, args.out, spec=args.model,
                         factory=args.index_factory, max_train=args.train_size or MAX_TRAIN,
                         nprobe=args.nprobe or DEFAULT_NPROBE, on_error=args.on_error,
                         progress=not args.quiet)
    if result.resumed:
        _note(f"resumed an interrupted build: {result.resumed} images were already embedded")
    for note in result.notes:
        _warn(note)
    print(f"indexed {result.added} references from {args.refs} into {args.out} "
          f"({result.index.info.factory}, {descriptor.dims} dims, model {result.index.info.spec}) "
          f"in {result.seconds:.1f} s")
    if result.skipped:
        print(f"{len(result.skipped)} file(s) skipped; listed with the reason in {args.out / SKIPPED_FILE}")


def cmd_index_add(args) -> None:
    from copydistill.search.index import SKIPPED_FILE, add_to_index, load_index

    ref_index = load_index(args.index)
    descriptor, _ = _index_descriptor(args, ref_index)
    result = add_to_index(args.index, args.folders, descriptor, on_error=args.on_error,
                          progress=not args.quiet)
    if result.resumed:
        _note(f"resumed an interrupted add: {result.resumed} images were already embedded")
    already = f"; {result.already_indexed} already indexed" if result.already_indexed else ""
    print(f"added {result.added} references{already}; the index now holds {len(result.index)}")
    if result.skipped:
        print(f"{len(result.skipped)} file(s) skipped; listed with the reason in {args.index / SKIPPED_FILE}")


def format_search(result, fmt: str, threshold) -> str:
    ordered = result.sorted()
    if fmt == "json":
        payload = {
            "k": result.k,
            "threshold": threshold.value,
            "threshold_source": threshold.source,
            "queries": [
                {"query": q.query, "matches": [
                    {"rank": m.rank, "reference": m.reference, "path": m.path,
                     "score": round(m.score, 6)} for m in q.matches]}
                for q in ordered
            ],
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped.items()],
        }
        return json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    if fmt == "csv":
        rows = [["query", "rank", "reference", "score", "reference_path"]]
        rows += [[q.query, m.rank, m.reference, f"{m.score:.6f}", m.path] for q in ordered for m in q.matches]
        return _csv(rows)
    lines = []
    width = max([len("query"), *(len(q.query) for q in ordered if q.matches)])
    lines.append(f"{'query':<{width}}  {'rank':>4}  {'score':>7}  reference")
    for q in ordered:
        for m in q.matches:
            label = q.query if m.rank == 1 else ""
            lines.append(f"{label:<{width}}  {m.rank:>4}  {m.score:>7.4f}  {m.path}")
    matched = sum(1 for q in result.queries if q.matches)
    lines.append(f"{len(result.queries)} queries, {matched} with matches; {threshold.source}")
    return "\n".join(lines) + "\n"


def cmd_index_search(args) -> None:
    from copydistill.search.calibrate import resolve_threshold
    from copydistill.search.gallery import search_gallery
    from copydistill.search.index import load_index, search_index

    check_output_file(args.out, "--out")
    check_output_file(args.html, "--html")
    ref_index = load_index(args.index)
    descriptor, _ = _index_descriptor(args, ref_index)
    threshold = resolve_threshold(args.threshold, ref_index.info.spec, ref_index.info.fingerprint)
    if threshold.warning:
        _warn(threshold.warning)
    result = search_index(ref_index, descriptor, args.queries, k=args.k, threshold=threshold.value,
                          nprobe=args.nprobe, on_error=args.on_error, progress=not args.quiet)
    _skipped_note(result.skipped, "query ")
    fmt = "json" if args.json else "csv" if args.csv else "table"
    if threshold.value is not None and fmt != "table":
        _note(f"only matches with score >= {threshold.value:.4f} are listed ({threshold.source})")
    _emit(format_search(result, fmt, threshold), args.out)
    if args.html:
        search_gallery(result, args.html, threshold.source, str(ref_index.root))
        _note(f"gallery: {args.html}")


def cmd_index_info(args) -> None:
    from dataclasses import asdict

    from copydistill.search.calibrate import find_calibration
    from copydistill.search.index import load_index

    ref_index = load_index(args.index)
    info = ref_index.info
    calibration = find_calibration(info.spec, info.fingerprint)
    size = sum(p.stat().st_size for p in (args.index / info.index_file, args.index / info.ids_file))
    if args.json:
        payload = asdict(info) | {
            "index_bytes": size,
            "calibration": None if calibration is None else {
                "thresholds": calibration.thresholds, "benchmark": calibration.benchmark,
                "stored": calibration.stored},
        }
        print(json.dumps(payload, indent=1))
        return
    print(f"index      {ref_index.root}")
    print(f"model      {info.spec} ({info.dims} dims, resize {info.fingerprint.get('resize')})")
    print(f"references {len(ref_index)} from {', '.join(info.sources)}")
    print(f"factory    {info.factory} ({size / 1e6:.1f} MB on disk, {size / max(len(ref_index), 1):.0f} B/reference)")
    if calibration is None:
        print("threshold  not calibrated (--threshold auto falls back to 0.75)")
    else:
        print(f"threshold  {calibration.thresholds} (precision -> score, on {calibration.benchmark})")


# --------------------------------------------------------------------------------------------
# dedup and calibrate
# --------------------------------------------------------------------------------------------


def format_dedup(result, fmt: str, threshold) -> str:
    if fmt == "json":
        payload = {
            "folder": result.folder, "images": result.images, "threshold": threshold.value,
            "threshold_source": threshold.source,
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
        return _csv(rows)
    lines = []
    for g, group in enumerate(result.groups, start=1):
        lines.append(f"group {g}: {group.size} images (strongest link {group.max_score:.4f})")
        for m in group.members:
            exact = f"  exact copy of {m.exact_of}" if m.exact_of else ""
            lines.append(f"  {m.best_score:.4f}  {m.path}{exact}")
    lines.append(f"{result.images} images, {len(result.groups)} groups of copies, {result.duplicates} "
                 f"images duplicate another; {threshold.source}")
    return "\n".join(lines) + "\n"


def cmd_dedup(args) -> None:
    from copydistill.search.calibrate import resolve_threshold
    from copydistill.search.dedup import find_copies
    from copydistill.search.gallery import dedup_gallery
    from copydistill.models.registry import normalise_spec

    check_output_file(args.out, "--out")
    check_output_file(args.html, "--html")
    descriptor = _descriptor(args, args.model)
    threshold = resolve_threshold(args.threshold, normalise_spec(args.model), descriptor.fingerprint())
    if threshold.warning:
        _warn(threshold.warning)
    result = find_copies(args.folder, descriptor, threshold.value, cache=args.cache,
                         on_error=args.on_error, progress=not args.quiet)
    _skipped_note(result.skipped, "")
    fmt = "json" if args.json else "csv" if args.csv else "table"
    _emit(format_dedup(result, fmt, threshold), args.out)
    if args.html:
        dedup_gallery(result, args.html, threshold.source)
        _note(f"gallery: {args.html}")


def cmd_calibrate(args) -> None:
    from copydistill.data.disc import DiscLayout
    from copydistill.search.calibrate import calibrate, save_calibration

    layout = DiscLayout.find(args.data, args.queries, args.references, None, args.ground_truth)
    descriptor = _descriptor(args, args.model)
    calibration = calibrate(layout, descriptor, args.model, run_dir=args.run_dir, k=args.k,
                            on_error=args.on_error, progress=not args.quiet)
    written, warnings = save_calibration(calibration)
    for warning in warnings:
        _warn(warning)
    print(f"calibrated {calibration.spec} on {args.data} ({calibration.num_queries} queries, "
          f"{calibration.num_references} references, µAP {calibration.uAP:.4f}):")
    for key, value in calibration.thresholds.items():
        recall = calibration.recalls[key]
        if value is None:
            print(f"  {float(key):.0%} precision: not reached")
        else:
            print(f"  {float(key):.0%} precision: score >= {value:.4f} (recall {recall:.3f})")
    print("stored in " + ", ".join(str(p) for p in written)
          + "; `--threshold auto` (search, dedup) uses it")
