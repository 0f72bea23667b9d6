"""The model YAMLs shipped in this package, and the plain ultralytics model each one extends.

    from ultralytics import YOLO
    from biformer.integrations.ultralytics import model_yaml

    model = YOLO(model_yaml("yolo11s-bra"))      # scale s of cfg/yolo11-bra.yaml

Names follow ultralytics: the scale letter after the version picks the row of ``scales``
(``yolo11n-bra`` ... ``yolo11x-bra``); ultralytics reads it from the file name and finds the
shipped ``yolo11-bra.yaml`` itself, as it does for its own ``yolo11n.yaml``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

__all__ = ["CONFIG_DIR", "MODEL_YAMLS", "baseline_dict", "baseline_name", "model_yaml",
           "parse_name"]

CONFIG_DIR = Path(__file__).resolve().parent / "cfg"
MODEL_YAMLS = ("yolo11-bra", "yolo11-c3k2-bra", "yolov8-bra", "yolov8-c2f-bra")
SCALES = "nsmlx"
_NAME = re.compile(r"^(yolo(?:11|v8))([nsmlx]?)(-.+)$")


def parse_name(name: str) -> tuple[str, str]:
    """``("yolo11-bra", "n")`` for ``"yolo11n-bra"`` (scale ``""`` when none is given)."""
    stem = Path(str(name)).name.removesuffix(".yaml").removesuffix(".yml")
    match = _NAME.match(stem)
    family = f"{match.group(1)}{match.group(3)}" if match else ""
    if family not in MODEL_YAMLS:
        examples = ", ".join(f"{y.replace('-', 'n-', 1)}" for y in MODEL_YAMLS)
        raise ValueError(
            f"unknown biformer YOLO model {name!r}; choose one of {examples} (any scale letter "
            f"of {'/'.join(SCALES)} in place of n)"
        )
    return family, match.group(2)


def model_yaml(name: str) -> str:
    """Path to give ``YOLO(...)`` for a shipped model, e.g. ``"yolo11n-bra"``; registers first.

    Returns ``.../cfg/yolo11n-bra.yaml``: with a scale letter the file itself does not exist
    and ultralytics resolves it to ``yolo11-bra.yaml`` at scale n (its own naming rule); without
    one (``"yolo11-bra"``) it is the shipped file, built at its first scale.
    """
    from .registration import register

    family, scale = parse_name(name)
    register()
    version = family.split("-", 1)[0]
    return str(CONFIG_DIR / f"{version}{scale}{family[len(version):]}.yaml")


def baseline_name(name: str) -> str:
    """The ultralytics model a shipped one extends: ``"yolo11n-bra"`` -> ``"yolo11n.yaml"``."""
    family, scale = parse_name(name)
    return f"{family.split('-', 1)[0]}{scale}.yaml"


def _absolute(source: int, row: int) -> int:
    return source if source >= 0 else row + source


def baseline_dict(d: dict) -> dict:
    """The model dict without our layers: ``BRA`` rows removed (their readers read the BRA
    input instead), ``C2f_BRA``/``C3k2_BRA`` back to ``C2f``/``C3k2`` without the options."""
    from .parsing import YAML_MODULES

    rows = list(d.get("backbone", [])) + list(d.get("head", []))
    new_index: dict[int, int] = {}
    kept: list[tuple[int, list]] = []
    for i, row in enumerate(rows):
        if row[2] in YAML_MODULES and YAML_MODULES[row[2]] is None:
            new_index[i] = new_index[_absolute(row[0], i)]
            continue
        new_index[i] = len(kept)
        kept.append((i, copy.deepcopy(row)))
    out_rows = []
    for j, (i, row) in enumerate(kept):
        sources = [row[0]] if isinstance(row[0], int) else row[0]
        mapped = [new_index.get(_absolute(s, i), -1) for s in sources]  # -1 of row 0: the image
        mapped = [-1 if s == j - 1 else s for s in mapped]
        row[0] = mapped[0] if isinstance(row[0], int) else mapped
        if row[2] in YAML_MODULES:
            row[2] = YAML_MODULES[row[2]]
            row[3] = [a for a in row[3] if not isinstance(a, dict)]
        out_rows.append(row)
    n_backbone = sum(1 for i, _ in kept if i < len(d.get("backbone", [])))
    return dict(d, backbone=out_rows[:n_backbone], head=out_rows[n_backbone:])
