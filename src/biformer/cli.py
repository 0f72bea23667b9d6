"""The ``biformer`` command line: one sub-command per task, each living beside its feature.

Every command module provides ``add_arguments(parser)`` and ``main(args) -> int``; they are
imported only when their command runs, so ``biformer info`` does not pay for the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CommandError

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("biformer.models.info", "parameters and MACs of every model next to the paper's"),
    "train": ("biformer.engine.train", "train a model (embedded digits by default, or --data)"),
    "eval": ("biformer.engine.evaluate", "top-1/top-5 and loss on a validation folder"),
    "predict": ("biformer.engine.predict", "top-5 classes of images"),
    "bench": ("biformer.bench", "operator and model benchmarks (table, JSON, --plot)"),
    "viz": ("biformer.viz.routing", "picture of the routed regions and attention of an image"),
    "plot": ("biformer.viz.curves", "training curves of a run directory"),
    "export": ("biformer.export", "export a model to ONNX or torch.export"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biformer", description="BiFormer: Bi-Level Routing Attention vision backbones."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.main(args) or 0)
    except CommandError as err:
        print(f"biformer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
