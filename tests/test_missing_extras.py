"""Optional dependencies that are not installed: one line naming the pip extra, no traceback."""

from __future__ import annotations

import sys

import pytest

from .cli import assert_one_line_error, run


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``import module`` fail as if it were not installed."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.setitem(sys.modules, name, None)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize("argv,hidden,extra", [
    (["plot", "{tmp}"], ("matplotlib",), "biformer[viz]"),
    (["viz", "--out", "{tmp}/r.png"], ("skimage",), "biformer[viz]"),
    (["viz", "--out", "{tmp}/r.png"], ("matplotlib",), "biformer[viz]"),
    (["export", "--out", "{tmp}/m.onnx"], ("onnx",), "biformer[export]"),
    (["bench", "--suite", "op", "--plot", "{tmp}/charts"], ("matplotlib",), "biformer[viz]"),
])
def test_a_missing_extra_is_named(argv, hidden, extra, tmp_path, capsys, monkeypatch):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1,2.0\n")
    args = [a.format(tmp=tmp_path) for a in argv]
    _hide(monkeypatch, *hidden)
    rc, _, err = run(capsys, *args)
    assert_one_line_error(rc, err, f"pip install '{extra}'", hidden[0])
