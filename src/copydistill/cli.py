"""The ``copydistill`` command. Parses arguments and calls the library; nothing else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from copydistill import argtypes  # noqa: E402
from copydistill.errors import CopydistillError  # noqa: E402


def _add_model_options(p: argparse.ArgumentParser, multiple: bool = False) -> None:
    if multiple:
        p.add_argument("--model", action="append", required=True, metavar="SPEC",
                       help="model spec (repeat to compare): phash, sscd-int8, onnx:PATH, "
                            "torchscript:PATH, resnet18, ... (see `copydistill models list`)")
    else:
        p.add_argument("--model", required=True, metavar="SPEC", help="model spec")
    p.add_argument("--resize", type=argtypes.resize_policy, default=None, metavar="POLICY",
                   help="short:288 (default, SSCD's protocol), square:288, long:800 or none")
    p.add_argument("--batch-size", type=argtypes.positive, default=None)
    p.add_argument("--threads", type=argtypes.positive, default=None, help="CPU threads for ONNX Runtime")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="images that cannot be used (unreadable, undecodable, too large): skip them "
                        "(listed in skipped.tsv) or stop")


def _add_parallel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=argtypes.positive, default=1, metavar="N",
                   help="embedding processes per node (GPUs or CPU processes); >1 runs DDP")
    p.add_argument("--num-nodes", type=argtypes.positive, default=1, metavar="M",
                   help="nodes of a torchrun/SLURM job (--out on a filesystem all nodes share)")
    p.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default=None,
                   help="embed through Lightning on this accelerator (default: the single-process "
                        "CPU path, or auto with --devices/--num-nodes > 1)")


def _parser() -> argparse.ArgumentParser:
    parser = argtypes.Parser(
        prog="copydistill", description="Image copy detection: train, distill, evaluate, search."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    mb = data.add_parser("make-benchmark", help="write the embedded DISC21-layout benchmark")
    mb.add_argument("--size", choices=("tiny", "small", "medium"), default="small")
    mb.add_argument("--seed", type=argtypes.seed, default=0)
    mb.add_argument("--out", type=Path, required=True)
    mb.add_argument("--photos", type=Path, action="append", default=[],
                    help="extra folder of your own photos (repeatable)")
    mb.add_argument("--source", choices=("auto", "real", "procedural"), default="auto",
                    help="real: references/queries from the curated photos (`data photos`); "
                         "procedural: synthetic scenes (tests); auto: real when cached")
    mb.add_argument("--workers", type=argtypes.positive, default=None)

    ph = data.add_parser("photos", help="fetch and curate the real photos available offline (cached)")
    ph.add_argument("--out", type=Path, default=None, help="cache folder (default ~/.cache/copydistill/photos)")
    ph.add_argument("--photos", type=Path, action="append", default=[],
                    help="also curate a folder of your own photos (repeatable)")
    ph.add_argument("--no-debian", action="store_true", help="skip the Debian packages (no apt-get)")
    ph.add_argument("--refresh", action="store_true", help="fetch and curate again")

    emb = sub.add_parser("embed", help="embed a folder of images (resumable)")
    _add_model_options(emb)
    emb.add_argument("--images", type=Path, required=True)
    emb.add_argument("--out", type=Path, required=True, help="output folder (embeddings.npz)")
    emb.add_argument("--hdf5", type=Path, default=None, help="also export ISC descriptor HDF5")
    _add_parallel_options(emb)

    ev = sub.add_parser("eval", help="evaluate descriptors").add_subparsers(dest="eval_command", required=True)
    disc = ev.add_parser("disc", help="DISC21 protocol (µAP, Acc@1, R@P90) on a DISC-layout folder")
    disc.add_argument("--data", type=Path, required=True)
    _add_model_options(disc, multiple=True)
    disc.add_argument("--out", type=Path, required=True)
    disc.add_argument("--score-norm", choices=("sscd", "isc", "none"), default="sscd",
                      help="score normalisation against the train split (reported beside raw)")
    disc.add_argument("--codec", action="store_true", help="also evaluate PCAW{d},L2norm,Flat")
    disc.add_argument("--codec-dims", type=argtypes.positive, default=None)
    disc.add_argument("--k", type=argtypes.positive, default=10, help="results per query (kNN)")
    disc.add_argument("--global-candidates", type=argtypes.positive, default=None, metavar="N",
                      help="keep the N best pairs overall instead of k per query (ISC track 2)")
    for name in ("queries", "references", "train", "ground-truth"):
        disc.add_argument(f"--{name}", default=None, help=f"override the {name} path (relative to --data)")
    disc.add_argument("--no-report", action="store_true")
    _add_parallel_options(disc)

    cd = ev.add_parser("copydays", help="Copydays (+ distractors): strong mAP and overall µAP")
    cd.add_argument("--data", type=Path, required=True, help="Copydays folder (original/, strong/, ...)")
    _add_model_options(cd)
    cd.add_argument("--distractors", type=Path, default=None, help="folder of distractor images (CD10K)")
    cd.add_argument("--whitening", type=Path, default=None, help="folder to train PCAW on")
    cd.add_argument("--codec-dims", type=argtypes.positive, default=None)
    cd.add_argument("--k", type=argtypes.positive, default=100)
    cd.add_argument("--out", type=Path, required=True)

    tr = sub.add_parser("train", help="train a student (SSCD baseline or distillation) from a recipe")
    tr.add_argument("--config", type=Path, default=None, help="YAML recipe (configs/*.yaml)")
    tr.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUT/checkpoints/last.ckpt)")
    tr.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe options")

    aug = sub.add_parser("augment", help="augmentations").add_subparsers(dest="augment_command", required=True)
    pv = aug.add_parser("preview", help="contact sheet of augmented views")
    pv.add_argument("--setting", choices=("SIMCLR", "STRONG_BLUR", "ADVANCED"), default="ADVANCED")
    pv.add_argument("--images", type=Path, default=None, help="folder of images (default: package photos)")
    pv.add_argument("--out", type=Path, required=True)
    pv.add_argument("--size", type=argtypes.integer(16, 4096), default=224)
    pv.add_argument("--count", type=argtypes.positive, default=6, help="images (rows)")
    pv.add_argument("--views", type=argtypes.positive, default=7, help="views per image (columns)")
    pv.add_argument("--seed", type=argtypes.seed, default=0)

    ex = sub.add_parser("export", help="export a torch model as ONNX or TorchScript (uint8 RGB in)")
    ex.add_argument("--model", required=True, metavar="SPEC")
    ex.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--resize", type=argtypes.resize_policy, default=None, metavar="POLICY",
                    help="resize policy stored in the file")

    models = sub.add_parser("models", help="model registry").add_subparsers(dest="models_command", required=True)
    ml = models.add_parser("list", help="students and teachers with parameters and GFLOPs")
    ml.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count (faster)")

    from copydistill.search.cli import register as register_search

    SEARCH_COMMANDS.update(register_search(sub))

    qs = sub.add_parser("quickstart", help="the one-command demo on the embedded benchmark")
    qs.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    qs.add_argument("--size", choices=("tiny", "small", "medium"), default="small")
    qs.add_argument("--seed", type=argtypes.seed, default=0)
    qs.add_argument("--config", type=Path, default=None, help="training recipe (default configs/quickstart.yaml)")
    qs.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe options")
    return parser


def _cmd_make_benchmark(args) -> None:
    from copydistill.data.benchmark import make_benchmark

    out = make_benchmark(args.out, args.size, args.seed, args.photos, args.source, workers=args.workers)
    meta = json.loads((out / "benchmark.json").read_text())
    print(f"benchmark {args.size} ({meta['source']} photos, seed {args.seed}) in {out}: {meta['references']} references, "
          f"{meta['queries']} queries ({meta['matched_queries']} with a match), {meta['train']} train")


def _cmd_photos(args) -> None:
    from copydistill.data.photos import PhotoLibrary, default_library

    library = PhotoLibrary(args.out) if args.out else default_library()
    library.build(debian=not args.no_debian, user_folders=args.photos, refresh=args.refresh)
    print(library.summary())
    if len(library.photos("photo")) == 0:
        print("no real photos: benchmarks fall back to procedural scenes (apt-get is needed for "
              "the Debian packages)")


def _load(args, spec: str):
    from copydistill.models import load_descriptor

    return load_descriptor(spec, resize=args.resize, threads=args.threads, batch_size=args.batch_size)


def _embedder(args):
    """``embed_records``, or its Lightning/DDP version when the parallel options ask for it."""
    from copydistill.eval.embed import embed_records

    if args.devices == 1 and args.num_nodes == 1 and args.accelerator is None:
        return embed_records
    from functools import partial

    from copydistill.eval.distributed_embed import embed_records_distributed

    return partial(embed_records_distributed, accelerator=args.accelerator or "auto",
                   devices=args.devices, num_nodes=args.num_nodes)


def _cmd_embed(args) -> None:
    from copydistill.data.disc import isc_image_names
    from copydistill.io.embeddings import Embeddings, resumable
    from copydistill.io.records import folder_records, no_images_error

    records = folder_records(args.images)  # ids: paths relative to --images, as index and dedup
    if not records:
        raise no_images_error(args.images)
    embed = _embedder(args)
    descriptor = _load(args, args.model)
    done = resumable(args.out, descriptor.fingerprint(), records)
    if done:
        print(f"copydistill: resuming an interrupted run: {done} of {len(records)} images were "
              "already embedded", file=sys.stderr)
    result = embed(descriptor, records, args.out, on_error=args.on_error)
    if result is None:  # a helper rank of a distributed run: rank 0 reports
        return
    if args.hdf5:
        Embeddings(isc_image_names(result.ids), result.vectors).export_isc_hdf5(args.hdf5)
    print(f"{len(result)} images embedded ({result.dims} dims) into {args.out / 'embeddings.npz'}")
    _report_skipped(args.out / "skipped.tsv")


def _report_skipped(*lists: Path) -> None:
    from copydistill.io.skiplist import read_skip_list

    count = sum(len(read_skip_list(path)) for path in lists)
    if count:
        print(f"{count} file(s) or folder(s) skipped (unreadable, not decodable or too large); "
              "listed with the reason in " + ", ".join(str(p) for p in lists if p.is_file()))


def _cmd_eval_disc(args) -> None:
    from copydistill.data.disc import DiscLayout
    from copydistill.eval.disc import evaluate_disc, format_table
    from copydistill.eval.report import write_report

    repeated = sorted({spec for spec in args.model if args.model.count(spec) > 1})
    if repeated:
        raise CopydistillError(f"--model {repeated[0]} is given twice; each model is evaluated once")
    layout = DiscLayout.find(args.data, args.queries, args.references, args.train, args.ground_truth)
    embed = _embedder(args)
    results = []
    for spec in args.model:
        descriptor = _load(args, spec)
        out = args.out if len(args.model) == 1 else args.out / spec.replace(":", "_").replace("/", "_")
        result = evaluate_disc(layout, descriptor, out, k=args.k, score_norm=args.score_norm,
                               codec=args.codec, codec_dims=args.codec_dims,
                               max_results=args.global_candidates, on_error=args.on_error,
                               embed=embed)
        if result is None:  # a helper rank of a distributed run: it only embeds
            continue
        results.append(result)
        _report_skipped(*(out / "embeddings" / s / "skipped.tsv" for s in ("queries", "references", "train")))
    if not results:
        return
    print(format_table([r.summary() for r in results]))
    if not args.no_report:
        report = write_report(results, args.out / "report.html", title=f"DISC evaluation: {args.data}")
        print(f"report: {report}")
    print(f"metrics: {', '.join(str(r.out / 'disc_metrics.csv') for r in results)}")


def _cmd_eval_copydays(args) -> None:
    from copydistill.eval.copydays import evaluate_copydays

    descriptor = _load(args, args.model)
    rows = evaluate_copydays(args.data, descriptor, args.out, distractors=args.distractors,
                             whitening=args.whitening, codec_dims=args.codec_dims, k=args.k,
                             on_error=args.on_error)
    print(f"{'codec':<24} {'strong mAP':>10} {'overall µAP':>12}")
    for row in rows:
        print(f"{row['codec']:<24} {row['strong_mAP']:>10.4f} {row['overall_uAP']:>12.4f}")
    print(f"metrics: {args.out / 'copydays_metrics.csv'}")


def _cmd_train(args) -> None:
    from copydistill.config import load_config
    from copydistill.train.run import train

    config = load_config(args.config, args.overrides)
    out = train(config, resume=args.resume)
    print(f"training finished: checkpoints, logs and the exported student are in {out}")


def _cmd_augment_preview(args) -> None:
    from copydistill.augment.preview import contact_sheet

    path = contact_sheet(args.out, args.setting, args.images, args.size, args.count, args.views, args.seed)
    print(f"contact sheet ({args.setting}): {path}")


def _cmd_export(args) -> None:
    from copydistill.models import load_descriptor
    from copydistill.models.export import export_descriptor

    descriptor = load_descriptor(args.model, resize=args.resize)
    worst = export_descriptor(descriptor, args.format, args.out)
    print(f"exported {args.model} as {args.format} to {args.out} "
          f"(verified against torch: min cosine {worst:.5f}); load it with {args.format}:{args.out}")


def _cmd_models_list(args) -> None:
    from copydistill.models.summary import model_table

    print(model_table(flops=not args.no_flops))


def _cmd_quickstart(args) -> None:
    from copydistill.quickstart import run_quickstart

    run_quickstart(args.out, size=args.size, seed=args.seed, recipe=args.config, overrides=args.overrides)


COMMANDS = {
    ("data", "make-benchmark"): _cmd_make_benchmark,
    ("data", "photos"): _cmd_photos,
    ("embed", None): _cmd_embed,
    ("eval", "disc"): _cmd_eval_disc,
    ("eval", "copydays"): _cmd_eval_copydays,
    ("models", "list"): _cmd_models_list,
    ("export", None): _cmd_export,
    ("train", None): _cmd_train,
    ("augment", "preview"): _cmd_augment_preview,
    ("quickstart", None): _cmd_quickstart,
}


SEARCH_COMMANDS: dict = {}  # filled by copydistill.search.cli.register: (command, sub) -> handler


def _os_error(err: OSError) -> str:
    """One line for an OSError: the path, what the system said and, where clear, the fix."""
    import errno

    hints = {errno.ENOSPC: "free some space or choose another location",
             errno.EROFS: "choose a writable location", errno.EACCES: "check the permissions",
             errno.EPERM: "check the permissions", errno.ENOENT: "check the path"}
    where = f"{err.filename}: " if err.filename else ""
    hint = f"; {hints[err.errno]}" if err.errno in hints else ""
    return f"{where}{err.strerror or err}{hint}"


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a one-line usage error (2)
        return stop.code if isinstance(stop.code, int) else 2
    sub = getattr(args, f"{args.command}_command", None)
    handler = COMMANDS.get((args.command, sub)) or SEARCH_COMMANDS[(args.command, sub)]
    try:
        handler(args)
    except CopydistillError as err:
        print(f"copydistill: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # the library turns the ones it expects into messages; this is the net
        print(f"copydistill: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("copydistill: interrupted; finished work is kept and the next run resumes from it",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
