"""``biformer info``: counted parameters and MACs agree with the paper's table."""

from __future__ import annotations

import json
import sys

import pytest

from biformer.cli import main as cli_main
from biformer.models import MODEL_NAMES, MODEL_SPECS
from biformer.models.info import count_cost

# exact parameter counts of the reference implementation (T/S/B) and its GMACs at 224x224
REFERENCE = {
    "biformer_tiny": (13_142_760, 2.216),
    "biformer_small": (25_536_232, 4.464),
    "biformer_base": (56_804_968, 9.759),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_counted_params_and_macs_match_the_paper(name):
    cost = count_cost(name)
    paper_params, paper_gmacs = MODEL_SPECS[name].params_m, MODEL_SPECS[name].gmacs
    assert (cost.paper_params_m, cost.paper_gmacs) == (paper_params, paper_gmacs)
    assert abs(cost.params_m - paper_params) <= 0.05
    assert abs(cost.gmacs - paper_gmacs) <= 0.05
    if name in REFERENCE:
        params, gmacs = REFERENCE[name]
        assert round(cost.params_m * 1e6) == params
        assert cost.gmacs == pytest.approx(gmacs, abs=5e-4)


def test_macs_grow_with_the_input():
    small, large = count_cost("biformer_tiny", img_size=224), count_cost("biformer_tiny",
                                                                         img_size=448)
    assert large.params_m == small.params_m
    assert 4.0 < large.gmacs / small.gmacs < 5.0  # 4x the tokens, global attention grows faster


def test_info_command_table_and_json(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the command line rewrites sys.argv
    assert cli_main(["info", "--models", "biformer_tiny", "biformer_stl"]) == 0
    table = capsys.readouterr().out
    lines = [line.split() for line in table.splitlines()]
    rows = {cells[0]: cells[1:] for cells in lines if cells and cells[0].startswith("biformer")}
    assert set(rows) == {"biformer_tiny", "biformer_stl"}
    assert rows["biformer_tiny"] == ["13.143", "2.216", "13.1", "2.2", "81.4"]
    assert rows["biformer_stl"][2:] == ["28.4", "4.6", "82.7"]

    assert cli_main(["info", "--json", "--models", "biformer_stl_nchw"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["model"] == "biformer_stl_nchw" and entry["img_size"] == 224
    assert entry["paper_top1"] == MODEL_SPECS["biformer_stl_nchw"].top1
    assert abs(entry["gmacs"] - entry["paper_gmacs"]) <= 0.05


def test_info_command_errors(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli_main(["info", "--models", "resnet50"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli_main(["info", "--models", "biformer_tiny", "--img-size", "16"]) == 2
    assert "at least 32" in capsys.readouterr().err


def test_info_counts_sizes_that_need_padding(capsys, monkeypatch):
    """100x100 gives 25x25 stage maps: padded to whole 7x7 regions, counted, no error."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli_main(["info", "--json", "--models", "biformer_tiny", "--img-size", "100"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["img_size"] == 100 and round(entry["params_m"], 3) == 13.143
    assert 0.3 < entry["gmacs"] < count_cost("biformer_tiny").gmacs
