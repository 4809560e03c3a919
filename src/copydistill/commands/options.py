"""Options shared by several commands (defined once) and the helpers that print their results."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from copydistill import argtypes
from copydistill.errors import CopydistillError

MODEL_HELP = "model spec: phash, sscd-int8, onnx:PATH, torchscript:PATH, resnet18, ... (see `copydistill models list`)"
REPEATED_MODEL_HELP = MODEL_HELP.replace("model spec:", "model spec (repeat to compare):")
SAME_MODEL_HELP = "model spec (default: the index's own; must give the same vectors)"


def model_options(p: argparse.ArgumentParser, *, required: bool = True, multiple: bool = False,
                  help: str = MODEL_HELP) -> None:
    """``--model`` (repeatable with ``multiple``: ``help`` is then the repeated one) and how it
    runs: --resize, --batch-size, --threads."""
    if multiple:
        p.add_argument("--model", action="append", required=required, metavar="SPEC",
                       help=REPEATED_MODEL_HELP)
    else:
        p.add_argument("--model", required=required, default=None, metavar="SPEC", help=help)
    p.add_argument("--resize", type=argtypes.resize_policy, default=None, metavar="POLICY",
                   help="short:288 (SSCD's protocol), square:288, long:800 or none")
    p.add_argument("--batch-size", type=argtypes.positive, default=None)
    p.add_argument("--threads", type=argtypes.positive, default=None, help="CPU threads for ONNX Runtime")


def on_error_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="images that cannot be used (unreadable, undecodable, too large): skip them "
                        "(listed in skipped.tsv) or stop")


def parallel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=argtypes.positive, default=1, metavar="N",
                   help="embedding processes per node (GPUs or CPU processes); >1 runs DDP")
    p.add_argument("--num-nodes", type=argtypes.positive, default=1, metavar="M",
                   help="nodes of a torchrun/SLURM job (--out on a filesystem all nodes share)")
    p.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default=None,
                   help="embed through Lightning on this accelerator (default: the single-process "
                        "CPU path, or auto with --devices/--num-nodes > 1)")


def quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def output_options(p: argparse.ArgumentParser, gallery: str) -> None:
    """--json | --csv, --out FILE, --html OUT.html and --quiet."""
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable JSON")
    fmt.add_argument("--csv", action="store_true", help="machine-readable CSV")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write the results to FILE (atomically) instead of stdout")
    p.add_argument("--html", type=Path, default=None, metavar="OUT.html", help=gallery)
    quiet_option(p)


def load_model(args: argparse.Namespace, spec: str, resize: str | None = None):
    """The Descriptor of ``spec`` with the model options; ``--resize`` wins over ``resize``."""
    from copydistill.models import load_descriptor

    return load_descriptor(spec, resize=args.resize or resize, threads=args.threads,
                           batch_size=args.batch_size)


def output_format(args: argparse.Namespace) -> str:
    return "json" if args.json else "csv" if args.csv else "table"


def note(text: str) -> None:
    print(f"copydistill: {text}", file=sys.stderr)


def warn(text: str) -> None:
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


def emit(text: str, out: Path | None) -> None:
    """Results to stdout, or atomically to ``out``."""
    if out is None:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    else:
        from copydistill.io.atomic import atomic_write_text

        atomic_write_text(out, text)
        note(f"results written to {out}")


def _one_line(text: str) -> str:
    """A file name as one line: tabs and line breaks shown as \\t, \\n, \\r."""
    return text.translate({9: "\\t", 10: "\\n", 13: "\\r"})


def skipped_note(skipped: dict[str, str], where: str) -> None:
    if skipped:
        warn(f"{len(skipped)} {where}file(s) skipped: "
             + "; ".join(f"{_one_line(p)} ({r})" for p, r in list(skipped.items())[:3])
             + (" ..." if len(skipped) > 3 else ""))


def report_skipped(*lists: Path) -> None:
    """Count the files the skip lists name and say where they are listed."""
    from copydistill.io.skiplist import read_skip_list

    count = sum(len(read_skip_list(path)) for path in lists)
    if count:
        print(f"{count} file(s) or folder(s) skipped (unreadable, not decodable or too large); "
              "listed with the reason in " + ", ".join(str(p) for p in lists if p.is_file()))
