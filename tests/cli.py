"""Running the ``biformer`` command line inside the test process."""

from __future__ import annotations

import sys

from biformer.cli import main as cli_main


def cli(argv: list[str]) -> int:
    """``biformer ARGV`` in this process (the command line rewrites ``sys.argv``: restored)."""
    saved = sys.argv[:]
    try:
        return cli_main(argv)
    finally:
        sys.argv = saved
