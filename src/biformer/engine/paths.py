"""Output paths checked before any work is done: a command never fails after its whole run
because its output cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

__all__ = ["check_output_dir", "check_output_file"]


def check_output_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """``path`` as a folder that exists (created if needed) and can be written."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"{what} {path}: {folder} is a file, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{what} {path} cannot be created ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path} cannot be written (permission denied or a read-only "
                         "filesystem)")
    return path


def check_output_file(path: str | os.PathLike, *, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a file that can be written: right suffix, writable folder, not a folder."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(
            f"output {path} must end with {' or '.join(suffixes)} (got {path.suffix or 'none'})"
        )
    if path.is_dir():
        raise InputError(f"output {path} is a directory; give a file name inside it")
    check_output_dir(path.parent if str(path.parent) else Path("."),
                     what=f"the folder of output {path}:")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"output {path} cannot be written (permission denied)")
    return path
