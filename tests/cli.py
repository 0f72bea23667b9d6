"""Running the ``biformer`` command line inside the test process, and checking its errors."""

from __future__ import annotations

from biformer.cli import main as cli_main

# The demo model shrunk further: a training epoch of a few batches takes about a second.
TINY_KWARGS = ["depths=1,1,1,1", "dims=16,32,64,64", "head_dim=16", "mlp_ratio=2",
               "n_win=4,2,2,1", "topks=4,2,2,-2"]
TINY_TRAIN = ["--model-kwargs", *TINY_KWARGS, "--batch-size", "16", "--limit-train-batches",
              "2", "--limit-val-batches", "1", "--no-tensorboard"]


def cli(argv: list[str]) -> int:
    """``biformer ARGV`` in this process (``main`` takes its argv; ``sys.argv`` is not used)."""
    return cli_main(list(argv))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``biformer ARGV`` with its exit status, stdout and stderr."""
    rc = cli(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, *phrases: str, status: int = 2) -> str:
    """The command failed with ``status`` and printed one line containing every phrase."""
    assert rc == status, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("biformer ") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]
