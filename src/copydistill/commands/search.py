"""The search commands: ``index build|add|search|info``, ``dedup``, ``calibrate``.

Parsing and printing only; the work is in ``search.index``, ``dedup``, ``calibrate`` and
``gallery``. Results go to stdout (or ``--out FILE``, written atomically); notes and warnings to
stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

from copydistill import argtypes
from copydistill.commands.options import (
    SAME_MODEL_HELP,
    check_output_file,
    emit,
    load_model,
    model_options,
    note,
    on_error_option,
    output_format,
    output_options,
    quiet_option,
    skipped_note,
    warn,
)
from copydistill.errors import CopydistillError, ModelSpecError

THRESHOLD_METAVAR = "auto|auto99|X"
BACKGROUND_HELP = ("normalise scores against the images under DIR (unrelated to the queries): minus "
                   "each image's mean top-3 background similarity, centred so the calibrated "
                   "threshold keeps its meaning; breaks chains through shared frames/templates")


def background_option(p) -> None:
    p.add_argument("--background", type=Path, default=None, metavar="DIR", help=BACKGROUND_HELP)


def _background(args, descriptor):
    """The embedded ``--background`` set, or None."""
    if args.background is None:
        return None
    from copydistill.search.normalise import load_background

    background = load_background(args.background, descriptor, on_error=args.on_error,
                                 progress=not args.quiet)
    note(background.describe())
    return background


def _index_model(args, ref_index):
    """The model of the index, or ``--model`` after checking it gives the same vectors."""
    info = ref_index.info
    if args.model is None:
        try:
            descriptor = load_model(args, info.spec, info.fingerprint.get("resize"))
        except ModelSpecError as err:
            raise CopydistillError(
                f"{ref_index.root}: cannot load the index's model {info.spec} ({err}); "
                "pass --model SPEC with the same weights"
            ) from err
        spec = info.spec
    else:
        descriptor = load_model(args, args.model, info.fingerprint.get("resize"))
        spec = args.model
    ref_index.check_descriptor(descriptor, spec)
    return descriptor


def index_build_args(p) -> None:
    p.add_argument("refs", type=Path, metavar="REFS_DIR", help="folder of reference images (recursive)")
    model_options(p)
    p.add_argument("--out", type=Path, required=True, metavar="INDEX_DIR", help="new index folder")
    p.add_argument("--index-factory", default="Flat", metavar="FACTORY",
                   help="FAISS factory string: Flat (exact, default), IVF4096,PQ32, ... "
                        "(see docs/search.md for memory per million references)")
    p.add_argument("--train-size", type=argtypes.positive, default=None, metavar="N",
                   help="vectors sampled to train IVF/PQ factories (default 100000)")
    p.add_argument("--nprobe", type=argtypes.positive, default=None, help="IVF lists visited per query (default 16)")
    quiet_option(p)
    on_error_option(p)


def cmd_index_build(args) -> None:
    from copydistill.search.faiss_tools import MAX_TRAIN
    from copydistill.search.index import build_index
    from copydistill.search.store import DEFAULT_NPROBE, SKIPPED_FILE

    descriptor = load_model(args, args.model)
    result = build_index(args.refs, descriptor, args.out, spec=args.model,
                         factory=args.index_factory, max_train=args.train_size or MAX_TRAIN,
                         nprobe=args.nprobe or DEFAULT_NPROBE, on_error=args.on_error,
                         progress=not args.quiet)
    if result.resumed:
        note(f"resumed an interrupted build: {result.resumed} images were already embedded")
    for line in result.notes:
        warn(line)
    print(f"indexed {result.added} references from {args.refs} into {args.out} "
          f"({result.index.info.factory}, {descriptor.dims} dims, model {result.index.info.spec}) "
          f"in {result.seconds:.1f} s")
    if result.skipped:
        print(f"{len(result.skipped)} file(s) skipped; listed with the reason in {args.out / SKIPPED_FILE}")


def index_add_args(p) -> None:
    p.add_argument("index", type=Path, metavar="INDEX_DIR")
    p.add_argument("folders", type=Path, nargs="+", metavar="FOLDER")
    model_options(p, required=False, help=SAME_MODEL_HELP)
    quiet_option(p)
    on_error_option(p)


def cmd_index_add(args) -> None:
    from copydistill.search.index import add_to_index
    from copydistill.search.store import SKIPPED_FILE, load_index

    descriptor = _index_model(args, load_index(args.index))
    result = add_to_index(args.index, args.folders, descriptor, on_error=args.on_error,
                          progress=not args.quiet)
    if result.resumed:
        note(f"resumed an interrupted add: {result.resumed} images were already embedded")
    already = f"; {result.already_indexed} already indexed" if result.already_indexed else ""
    print(f"added {result.added} references{already}; the index now holds {len(result.index)}")
    if result.skipped:
        print(f"{len(result.skipped)} file(s) skipped; listed with the reason in {args.index / SKIPPED_FILE}")


def index_search_args(p) -> None:
    p.add_argument("index", type=Path, metavar="INDEX_DIR")
    p.add_argument("queries", type=Path, nargs="+", metavar="QUERY",
                   help="query images or folders of them (recursive)")
    p.add_argument("--k", type=argtypes.positive, default=10, help="matches per query before the threshold (10)")
    p.add_argument("--threshold", type=argtypes.threshold, default=None, metavar=THRESHOLD_METAVAR,
                   help="keep matches scoring >= X; auto = the calibrated 90 %% precision "
                        "threshold (fallback 0.75 with a warning), auto99 = 99 %%")
    p.add_argument("--nprobe", type=argtypes.positive, default=None, help="IVF lists visited per query")
    background_option(p)
    model_options(p, required=False, help=SAME_MODEL_HELP)
    output_options(p, "also write an HTML gallery: each query beside its matches")
    on_error_option(p)


def cmd_index_search(args) -> None:
    from copydistill.search.calibrate import resolve_threshold
    from copydistill.search.formats import format_search
    from copydistill.search.gallery import search_gallery
    from copydistill.search.index import search_index
    from copydistill.search.store import load_index

    check_output_file(args.out, "--out")
    check_output_file(args.html, "--html")
    ref_index = load_index(args.index)
    descriptor = _index_model(args, ref_index)
    threshold = resolve_threshold(args.threshold, ref_index.info.spec, ref_index.info.fingerprint)
    if threshold.warning:
        warn(threshold.warning)
    background = _background(args, descriptor)
    result = search_index(ref_index, descriptor, args.queries, k=args.k, threshold=threshold.value,
                          nprobe=args.nprobe, on_error=args.on_error, progress=not args.quiet,
                          background=background)
    skipped_note(result.skipped, "query ")
    fmt = output_format(args)
    if threshold.value is not None and fmt != "table":
        note(f"only matches with score >= {threshold.value:.4f} are listed ({threshold.source})")
    emit(format_search(result, fmt, threshold), args.out)
    if args.html:
        search_gallery(result, args.html, threshold.source, str(ref_index.root))
        note(f"gallery: {args.html}")


def index_info_args(p) -> None:
    p.add_argument("index", type=Path, metavar="INDEX_DIR")
    p.add_argument("--json", action="store_true")


def cmd_index_info(args) -> None:
    from dataclasses import asdict

    from copydistill.search.calibrate import find_calibration
    from copydistill.search.store import load_index

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


def dedup_args(p) -> None:
    p.add_argument("folder", type=Path, metavar="DIR")
    model_options(p)
    p.add_argument("--threshold", type=argtypes.threshold, default="auto", metavar=THRESHOLD_METAVAR,
                   help="link two images when their score >= X (default auto: calibrated, "
                        "else 0.75 with a warning)")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="keep the embeddings here so an interrupted or repeated run resumes")
    background_option(p)
    output_options(p, "also write an HTML gallery: each group's first image beside its copies")
    on_error_option(p)


def cmd_dedup(args) -> None:
    from copydistill.models.registry import normalise_spec
    from copydistill.search.calibrate import resolve_threshold
    from copydistill.search.dedup import find_copies
    from copydistill.search.formats import format_dedup
    from copydistill.search.gallery import dedup_gallery

    check_output_file(args.out, "--out")
    check_output_file(args.html, "--html")
    descriptor = load_model(args, args.model)
    threshold = resolve_threshold(args.threshold, normalise_spec(args.model), descriptor.fingerprint())
    if threshold.warning:
        warn(threshold.warning)
    background = _background(args, descriptor)
    result = find_copies(args.folder, descriptor, threshold.value, cache=args.cache,
                         on_error=args.on_error, progress=not args.quiet, background=background)
    skipped_note(result.skipped, "")
    emit(format_dedup(result, output_format(args), threshold), args.out)
    if args.html:
        dedup_gallery(result, args.html, threshold.source)
        note(f"gallery: {args.html}")


def calibrate_args(p) -> None:
    p.add_argument("--data", type=Path, required=True, metavar="DISC_LAYOUT_DIR",
                   help="a DISC-layout benchmark (e.g. `copydistill data make-benchmark`)")
    model_options(p)
    p.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                   help="keep embeddings and predictions here (default: a temporary folder)")
    p.add_argument("--k", type=argtypes.positive, default=10)
    for name in ("queries", "references", "ground-truth"):
        p.add_argument(f"--{name}", default=None, help=f"override the {name} path (relative to --data)")
    quiet_option(p)
    on_error_option(p)


def cmd_calibrate(args) -> None:
    from copydistill.data.disc import DiscLayout
    from copydistill.search.calibrate import calibrate, save_calibration

    layout = DiscLayout.find(args.data, args.queries, args.references, None, args.ground_truth)
    descriptor = load_model(args, args.model)
    calibration = calibrate(layout, descriptor, args.model, run_dir=args.run_dir, k=args.k,
                            on_error=args.on_error, progress=not args.quiet)
    written, warnings = save_calibration(calibration)
    for warning in warnings:
        warn(warning)
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
