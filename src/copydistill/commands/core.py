"""The commands for data, embedding, evaluation, training, augmentation, export and models:
each one's arguments and what it runs. Parsing and printing only; the work is in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from copydistill import argtypes
from copydistill.commands.options import (
    load_model,
    model_options,
    on_error_option,
    parallel_options,
    report_skipped,
)
from copydistill.errors import CopydistillError

SIZES = ("tiny", "small", "medium")


def make_benchmark_args(p) -> None:
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--photos", type=Path, action="append", default=[],
                   help="extra folder of your own photos (repeatable)")
    p.add_argument("--source", choices=("auto", "real", "procedural"), default="auto",
                   help="real: references/queries from the curated photos (`data photos`); "
                        "procedural: synthetic scenes (tests); auto: real when cached")
    p.add_argument("--workers", type=argtypes.positive, default=None)


def cmd_make_benchmark(args) -> None:
    from copydistill.data.benchmark import make_benchmark

    out = make_benchmark(args.out, args.size, args.seed, args.photos, args.source, workers=args.workers)
    meta = json.loads((out / "benchmark.json").read_text())
    print(f"benchmark {args.size} ({meta['source']} photos, seed {args.seed}) in {out}: {meta['references']} references, "
          f"{meta['queries']} queries ({meta['matched_queries']} with a match), {meta['train']} train")


def photos_args(p) -> None:
    p.add_argument("--out", type=Path, default=None, help="cache folder (default ~/.cache/copydistill/photos)")
    p.add_argument("--photos", type=Path, action="append", default=[],
                   help="also curate a folder of your own photos (repeatable)")
    p.add_argument("--no-debian", action="store_true", help="skip the Debian packages (no apt-get)")
    p.add_argument("--refresh", action="store_true", help="fetch and curate again")


def cmd_photos(args) -> None:
    from copydistill.data.photos import PhotoLibrary, default_library

    library = PhotoLibrary(args.out) if args.out else default_library()
    library.build(debian=not args.no_debian, user_folders=args.photos, refresh=args.refresh)
    print(library.summary())
    if len(library.photos("photo")) == 0:
        print("no real photos: benchmarks fall back to procedural scenes (apt-get is needed for "
              "the Debian packages)")


def _embedder(args):
    """``embed_records``, or its Lightning/DDP version when the parallel options ask for it."""
    from copydistill.eval.embed import embed_records

    if args.devices == 1 and args.num_nodes == 1 and args.accelerator is None:
        return embed_records
    from functools import partial

    from copydistill.eval.distributed_embed import embed_records_distributed

    return partial(embed_records_distributed, accelerator=args.accelerator or "auto",
                   devices=args.devices, num_nodes=args.num_nodes)


def embed_args(p) -> None:
    model_options(p)
    on_error_option(p)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder (embeddings.npz)")
    p.add_argument("--hdf5", type=Path, default=None, help="also export ISC descriptor HDF5")
    parallel_options(p)


def cmd_embed(args) -> None:
    from copydistill.data.disc import isc_image_names
    from copydistill.io.embeddings import Embeddings, resumable
    from copydistill.io.records import folder_records, no_images_error

    records = folder_records(args.images)  # ids: paths relative to --images, as index and dedup
    if not records:
        raise no_images_error(args.images)
    embed_records = _embedder(args)
    descriptor = load_model(args, args.model)
    done = resumable(args.out, descriptor.fingerprint(), records)
    if done:
        print(f"copydistill: resuming an interrupted run: {done} of {len(records)} images were "
              "already embedded", file=sys.stderr)
    result = embed_records(descriptor, records, args.out, on_error=args.on_error)
    if result is None:  # a helper rank of a distributed run: rank 0 reports
        return
    if args.hdf5:
        Embeddings(isc_image_names(result.ids), result.vectors).export_isc_hdf5(args.hdf5)
    print(f"{len(result)} images embedded ({result.dims} dims) into {args.out / 'embeddings.npz'}")
    report_skipped(args.out / "skipped.tsv")


def eval_disc_args(p) -> None:
    p.add_argument("--data", type=Path, required=True)
    model_options(p, multiple=True)
    on_error_option(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--score-norm", choices=("sscd", "isc", "none"), default="sscd",
                   help="score normalisation against the train split (reported beside raw)")
    p.add_argument("--codec", action="store_true", help="also evaluate PCAW{d},L2norm,Flat")
    p.add_argument("--codec-dims", type=argtypes.positive, default=None)
    p.add_argument("--k", type=argtypes.positive, default=10, help="results per query (kNN)")
    p.add_argument("--global-candidates", type=argtypes.positive, default=None, metavar="N",
                   help="keep the N best pairs overall instead of k per query (ISC track 2)")
    for name in ("queries", "references", "train", "ground-truth"):
        p.add_argument(f"--{name}", default=None, help=f"override the {name} path (relative to --data)")
    p.add_argument("--no-report", action="store_true")
    parallel_options(p)


def cmd_eval_disc(args) -> None:
    from copydistill.data.disc import DiscLayout
    from copydistill.eval.disc import evaluate_disc, format_table
    from copydistill.eval.report import write_report

    repeated = sorted({spec for spec in args.model if args.model.count(spec) > 1})
    if repeated:
        raise CopydistillError(f"--model {repeated[0]} is given twice; each model is evaluated once")
    layout = DiscLayout.find(args.data, args.queries, args.references, args.train, args.ground_truth)
    embed_records = _embedder(args)
    results = []
    for spec in args.model:
        descriptor = load_model(args, spec)
        out = args.out if len(args.model) == 1 else args.out / spec.replace(":", "_").replace("/", "_")
        result = evaluate_disc(layout, descriptor, out, k=args.k, score_norm=args.score_norm,
                               codec=args.codec, codec_dims=args.codec_dims,
                               max_results=args.global_candidates, on_error=args.on_error,
                               embed=embed_records)
        if result is None:  # a helper rank of a distributed run: it only embeds
            continue
        results.append(result)
        report_skipped(*(out / "embeddings" / s / "skipped.tsv" for s in ("queries", "references", "train")))
    if not results:
        return
    print(format_table([r.summary() for r in results]))
    if not args.no_report:
        report = write_report(results, args.out / "report.html", title=f"DISC evaluation: {args.data}")
        print(f"report: {report}")
    print(f"metrics: {', '.join(str(r.out / 'disc_metrics.csv') for r in results)}")


def eval_copydays_args(p) -> None:
    p.add_argument("--data", type=Path, required=True, help="Copydays folder (original/, strong/, ...)")
    model_options(p)
    on_error_option(p)
    p.add_argument("--distractors", type=Path, default=None, help="folder of distractor images (CD10K)")
    p.add_argument("--whitening", type=Path, default=None, help="folder to train PCAW on")
    p.add_argument("--codec-dims", type=argtypes.positive, default=None)
    p.add_argument("--k", type=argtypes.positive, default=100)
    p.add_argument("--out", type=Path, required=True)


def cmd_eval_copydays(args) -> None:
    from copydistill.eval.copydays import evaluate_copydays

    descriptor = load_model(args, args.model)
    rows = evaluate_copydays(args.data, descriptor, args.out, distractors=args.distractors,
                             whitening=args.whitening, codec_dims=args.codec_dims, k=args.k,
                             on_error=args.on_error)
    print(f"{'codec':<24} {'strong mAP':>10} {'overall µAP':>12}")
    for row in rows:
        print(f"{row['codec']:<24} {row['strong_mAP']:>10.4f} {row['overall_uAP']:>12.4f}")
    print(f"metrics: {args.out / 'copydays_metrics.csv'}")


def train_args(p) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUT/checkpoints/last.ckpt)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe options")


def cmd_train(args) -> None:
    from copydistill.config import load_config
    from copydistill.train.run import train

    config = load_config(args.config, args.overrides)
    out = train(config, resume=args.resume)
    print(f"training finished: checkpoints, logs and the exported student are in {out}")


def augment_preview_args(p) -> None:
    p.add_argument("--setting", choices=("SIMCLR", "STRONG_BLUR", "ADVANCED"), default="ADVANCED")
    p.add_argument("--images", type=Path, default=None, help="folder of images (default: package photos)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=argtypes.integer(16, 4096), default=224)
    p.add_argument("--count", type=argtypes.positive, default=6, help="images (rows)")
    p.add_argument("--views", type=argtypes.positive, default=7, help="views per image (columns)")
    p.add_argument("--seed", type=argtypes.seed, default=0)


def cmd_augment_preview(args) -> None:
    from copydistill.augment.preview import contact_sheet

    path = contact_sheet(args.out, args.setting, args.images, args.size, args.count, args.views, args.seed)
    print(f"contact sheet ({args.setting}): {path}")


def export_args(p) -> None:
    p.add_argument("--model", required=True, metavar="SPEC")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resize", type=argtypes.resize_policy, default=None, metavar="POLICY",
                   help="resize policy stored in the file")


def cmd_export(args) -> None:
    from copydistill.models import load_descriptor
    from copydistill.models.export import export_descriptor

    descriptor = load_descriptor(args.model, resize=args.resize)
    worst = export_descriptor(descriptor, args.format, args.out)
    print(f"exported {args.model} as {args.format} to {args.out} "
          f"(verified against torch: min cosine {worst:.5f}); load it with {args.format}:{args.out}")


def whiten_args(p) -> None:
    from copydistill.train.whitening import DEFAULT_MAX_IMAGES, DEFAULT_SHRINKAGE, DEFAULT_VIEWS, METHODS

    p.add_argument("--model", type=Path, required=True, metavar="STUDENT.pt",
                   help="a student.pt that copydistill train wrote (final/ or best/)")
    p.add_argument("--images", type=Path, required=True,
                   help="images to fit on: the train split (never the references or queries)")
    p.add_argument("--dims", type=argtypes.positive, default=None, help="whitened width (default: all)")
    p.add_argument("--shrinkage", type=argtypes.positive_number, default=None,
                   help="x the mean eigenvalue, added to every eigenvalue (default: a whitened "
                        f"student's own, e.g. 0.003 for a distilled one; else {DEFAULT_SHRINKAGE})")
    p.add_argument("--method", choices=METHODS, default="pca",
                   help="pca: PCA whitening; learned: whitened by how descriptors move under edits "
                        "(each image against --views augmented views of it)")
    p.add_argument("--views", type=argtypes.positive, default=DEFAULT_VIEWS,
                   help=f"augmented views per image for --method learned (default {DEFAULT_VIEWS})")
    p.add_argument("--max-images", type=argtypes.integer(2), default=DEFAULT_MAX_IMAGES)
    p.add_argument("--seed", type=argtypes.seed, default=0, help="of the image sample and the views")
    p.add_argument("--out", type=Path, default=None, help="write here (default: replace --model)")
    p.add_argument("--export", choices=("onnx", "torchscript"), action="append", default=[],
                   help="also export the whitened student beside --out (repeatable)")


def cmd_whiten(args) -> None:
    from copydistill.train.run import export_student_files
    from copydistill.train.whitening import whiten_student

    out = args.out or args.model
    if out.name != "student.pt" and args.export:
        raise CopydistillError(f"--out {out}: --export writes student.onnx beside a file named student.pt")
    fit = whiten_student(args.model, args.images, args.dims, args.shrinkage, args.max_images, args.seed, out,
                         method=args.method, views=args.views)
    how = f", learned from {fit.views} views of each" if fit.method == "learned" else ""
    print(f"{out}: whitened to {fit.dims} dims on {fit.images} images of {fit.folder} "
          f"(shrinkage {fit.shrinkage}{how}); load it with ckpt:{out}")
    for path in export_student_files(out.parent, args.export):
        print(f"exported {path}")


def models_list_args(p) -> None:
    p.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count (faster)")


def cmd_models_list(args) -> None:
    from copydistill.models.summary import model_table

    print(model_table(flops=not args.no_flops))


def quickstart_args(p) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--seed", type=argtypes.seed, default=0)
    p.add_argument("--config", type=Path, default=None, help="training recipe (default configs/quickstart.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe options")


def cmd_quickstart(args) -> None:
    from copydistill.quickstart import run_quickstart

    run_quickstart(args.out, size=args.size, seed=args.seed, recipe=args.config, overrides=args.overrides)
