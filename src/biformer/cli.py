"""The ``biformer`` command line: one sub-command per task, each living beside its feature.

Every command module provides ``add_arguments(parser)`` and ``main(args) -> int``. Only the
module of the command being run is imported (``biformer info`` does not pay for the training
stack): ``main(argv)`` reads the command name from ``argv`` (never from ``sys.argv`` unless
``argv`` is None) and builds a parser holding that command's arguments.

User errors print one line, ``biformer COMMAND: error: ...``, and exit with status 2 (1 for a
failure of the machine such as a full disk); a second Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import CommandError, InputError, one_line

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("biformer.models.info", "parameters and MACs of every model next to the paper's"),
    "train": ("biformer.engine.train", "train a model (embedded digits by default, or --data)"),
    "eval": ("biformer.engine.eval_command", "top-1/top-5 and loss on a validation folder"),
    "predict": ("biformer.engine.predict", "top-5 classes of images"),
    "convert": ("biformer.checkpoint.convert_command",
                "a checkpoint to the timm / Hugging Face folder layout (config.json + "
                "model.safetensors)"),
    "bench": ("biformer.bench", "operator and model benchmarks (table, JSON, --plot)"),
    "viz": ("biformer.viz.routing", "picture of the routed regions and attention of an image"),
    "plot": ("biformer.viz.curves", "training curves of a run directory"),
    "export": ("biformer.export_command", "export a model to ONNX, TorchScript or torch.export"),
    "yolo-demo": ("biformer.integrations.ultralytics.demo",
                  "YOLO with and without BRA on synthetic digit detection (ultralytics)"),
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``biformer``; ``command``'s sub-parser gets its module's arguments."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="biformer", description="BiFormer: Bi-Level Routing Attention vision backbones."
    )
    parser.add_argument("--version", action="version", version=f"biformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(args._module)
    return int(module.main(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``biformer ARGV`` (``sys.argv[1:]`` when None) and return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    try:
        parser = build_parser(command if command in COMMANDS else None)
    except InputError as err:  # an optional dependency of the command is missing
        print(f"biformer {command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .ops import BackendUnavailable

    try:
        return _run(args)
    except CommandError as err:
        print(f"biformer {args.command}: error: {err}", file=sys.stderr)
        return err.exit_status
    except (InputError, BackendUnavailable) as err:
        print(f"biformer {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
