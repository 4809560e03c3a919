"""The ``copydistill`` command: one table of commands, each with its arguments and its handler
(``copydistill.commands``). Parses arguments and calls the library; nothing else."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from copydistill import argtypes  # noqa: E402
from copydistill.commands import core, search, serve  # noqa: E402
from copydistill.errors import CopydistillError  # noqa: E402


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # ("index", "build"): a command of the group ``index``; ("embed",)
    help: str
    arguments: Callable  # (parser) -> None: adds the command's arguments
    run: Callable  # (args) -> None


GROUPS = {  # commands with sub-commands, and their help
    "data": "datasets",
    "eval": "evaluate descriptors",
    "augment": "augmentations",
    "models": "model registry",
    "index": "a persistent reference index: build, add, search",
}

COMMANDS = (
    Command(("data", "make-benchmark"), "write the embedded DISC21-layout benchmark",
            core.make_benchmark_args, core.cmd_make_benchmark),
    Command(("data", "photos"), "fetch and curate the real photos available offline (cached)",
            core.photos_args, core.cmd_photos),
    Command(("embed",), "embed a folder of images (resumable)", core.embed_args, core.cmd_embed),
    Command(("eval", "disc"), "DISC21 protocol (µAP, Acc@1, R@P90) on a DISC-layout folder",
            core.eval_disc_args, core.cmd_eval_disc),
    Command(("eval", "copydays"), "Copydays (+ distractors): strong mAP and overall µAP",
            core.eval_copydays_args, core.cmd_eval_copydays),
    Command(("train",), "train a student (SSCD baseline or distillation) from a recipe",
            core.train_args, core.cmd_train),
    Command(("augment", "preview"), "contact sheet of augmented views",
            core.augment_preview_args, core.cmd_augment_preview),
    Command(("export",), "export a torch model as ONNX or TorchScript (uint8 RGB in)",
            core.export_args, core.cmd_export),
    Command(("whiten",), "fit a PCA whitening on train images into a trained student.pt",
            core.whiten_args, core.cmd_whiten),
    Command(("models", "list"), "students and teachers with parameters and GFLOPs",
            core.models_list_args, core.cmd_models_list),
    Command(("index", "build"), "embed a folder of references into a new index",
            search.index_build_args, search.cmd_index_build),
    Command(("index", "add"), "add the new images of folders to an index (references untouched)",
            search.index_add_args, search.cmd_index_add),
    Command(("index", "search"), "find the references that queries copy",
            search.index_search_args, search.cmd_index_search),
    Command(("index", "info"), "what an index holds: model, size, factory, calibration",
            search.index_info_args, search.cmd_index_info),
    Command(("dedup",), "groups of copies inside one folder (transitive)", search.dedup_args, search.cmd_dedup),
    Command(("calibrate",), "measure a model's 90 %% / 99 %% precision thresholds",
            search.calibrate_args, search.cmd_calibrate),
    Command(("serve",), "a matching service over an index: HTTP API and a web page",
            serve.serve_args, serve.cmd_serve),
    Command(("quickstart",), "the one-command demo on the embedded benchmark",
            core.quickstart_args, core.cmd_quickstart),
)


def build_parser(commands: tuple[Command, ...] = COMMANDS) -> argtypes.Parser:
    """The argument parser of every command in ``commands``, in their order."""
    parser = argtypes.Parser(
        prog="copydistill", description="Image copy detection: train, distill, evaluate, search."
    )
    top = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, object] = {}
    for command in commands:
        first, *rest = command.words
        if rest:
            if first not in groups:
                group = top.add_parser(first, help=GROUPS[first])
                groups[first] = group.add_subparsers(dest=f"{first}_command", required=True)
            leaf = groups[first].add_parser(rest[0], help=command.help)
        else:
            leaf = top.add_parser(first, help=command.help)
        command.arguments(leaf)
        leaf.set_defaults(run=command.run)
    return parser


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
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a one-line usage error (2)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        args.run(args)
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
