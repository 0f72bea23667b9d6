"""The distribution's metadata: licence file, URLs, classifiers, the typed marker."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_names_the_licence_urls_and_classifiers():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT")
    assert project["license-files"] == ["LICENSE"]
    assert project["urls"]["Paper"].startswith("https://arxiv.org/")
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in project["classifiers"])
    assert (ROOT / "src" / "biformer" / "py.typed").exists()
    extras = project["optional-dependencies"]
    for extra in ("viz", "export", "seg", "log", "yolo", "dev"):
        assert extra in extras, extra
