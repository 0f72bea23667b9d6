"""Running ultralytics without any network access (no settings sync, font or weight download).

ultralytics reads two environment variables when it is first imported: ``YOLO_OFFLINE=1``
(its own switch: every online check answers "offline") and ``YOLO_CONFIG_DIR`` (where its
``settings.json`` and downloaded fonts live). One download is not covered by the switch: every
dataset check and every picture with labels asks for ``Arial.ttf`` in the config folder and,
when it is missing, tries to fetch it. ``provide_font()`` puts a font there first: matplotlib's
bundled DejaVu Sans (matplotlib is an ultralytics dependency), under the name ultralytics looks
for. The AMP check never runs when training on the CPU or with ``amp=False``, and models built
from YAMLs load no pretrained weights, so nothing else is fetched.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["FONT_NAME", "go_offline", "provide_font"]

FONT_NAME = "Arial.ttf"


def go_offline(config_dir: str | os.PathLike | None = None) -> bool:
    """Set ``YOLO_OFFLINE=1`` (and ``YOLO_CONFIG_DIR`` when given) before ultralytics is imported.

    Returns False when ultralytics was already imported in this process: the variables are
    then set but ultralytics keeps the values it read (its own settings folder and online
    state), so call this first.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    if config_dir is not None:
        Path(config_dir).mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(Path(config_dir).resolve())
    return "ultralytics" not in sys.modules


def provide_font() -> Path:
    """Make sure ultralytics finds its label font locally; returns the font file it will use.

    Copies matplotlib's DejaVu Sans to ``<ultralytics config folder>/Arial.ttf`` unless a file
    of that name is already there (a real Arial, e.g. downloaded earlier, is kept).
    """
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    target = Path(USER_CONFIG_DIR) / FONT_NAME
    if not target.exists():
        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return target
