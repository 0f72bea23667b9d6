"""Checkpoint files: safe reading (tensors and plain data only) and atomic writing.

Reading never runs code: ``.pth``/``.pt``/``.bin``/``.tar`` files go through
``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed, as timm's train.py stores its
arguments that way), ``.safetensors`` through safetensors. Writing goes to a temporary file in
the same folder, which is then renamed over the target: a reader, or a crash, sees either the
previous file or the new one, never half of one.

A write error of the file system (``ENOSPC`` on a full disk) is raised as that ``OSError``:
``torch.save`` reports it as a ``RuntimeError`` of its zip writer ("unexpected pos ..."), so the
file given to the writer remembers the first ``OSError`` of its ``write`` calls.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import CheckpointError, MissingFileError

__all__ = [
    "atomic_save",
    "atomic_write",
    "process_alive",
    "read_file",
    "remove_orphans",
    "tmp_name",
]

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _first_reason(err: BaseException) -> str:
    """One line about ``err`` (the unpickler's own reason when torch wraps it in advice)."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    line = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {line.strip()[:200]}"


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read {path}: not a PyTorch checkpoint, or a corrupt or truncated file "
        f"({_first_reason(err)})"
    )


def _torch_load(path: Path, map_location: Any) -> Any:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        needed = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if needed is None:
            raise _corrupt(path, err) from None
        raise CheckpointError(
            f"refusing to load {path}: it stores Python objects that can only be rebuilt by "
            f"running code (it needs {needed.group(1)}). Only tensors and plain containers are "
            "read. If you trust the file, re-save its weights in a trusted environment with "
            "torch.save(model.state_dict(), ...) or as .safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError,
            KeyError, IndexError, TypeError) as err:
        raise _corrupt(path, err) from None


def _safetensors_load(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    device = str(map_location) if map_location is not None else "cpu"
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"cannot read {path}: not a valid .safetensors file ({type(err).__name__}: {err})"
        ) from None


def read_file(path: str | os.PathLike, *, map_location: Any = "cpu") -> Any:
    """The object stored in checkpoint ``path`` (usually a dict), read without running code.

    Raises ``MissingFileError`` (a ``FileNotFoundError``) or ``CheckpointError``, naming the path.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it")
    if path.suffix == ".safetensors":
        return _safetensors_load(path, map_location)
    return _torch_load(path, map_location)


def tmp_name(path: str | os.PathLike) -> Path:
    """The temporary file ``atomic_write`` uses for ``path``: ``.NAME.PID.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class _Recording(io.RawIOBase):
    """A writable binary file that passes writes on to ``file`` and keeps their first OSError."""

    def __init__(self, file: IO[bytes]):
        super().__init__()
        self.file = file
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it over ``path``.

    On any failure the temporary file is removed, ``path`` keeps its previous content and the
    error propagates; a failed write of the file system (``ENOSPC`` included) as its ``OSError``,
    whatever error ``write`` turned it into.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            recording = _Recording(f)
            try:
                write(recording)
            except Exception as err:
                if recording.error is not None and recording.error is not err:
                    raise recording.error from err
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: some filesystems refuse to sync a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see ``atomic_write``).

    Calls ``torch.serialization.save``, not the ``torch.save`` attribute, which other libraries
    replace (ultralytics, when imported, with one that retries into the same half-written file).
    """
    atomic_write(path, lambda f: torch.serialization.save(obj, f))


def process_alive(pid: int) -> bool:
    """True when process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(directory: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.PID.tmp`` files that killed writers left in ``directory``.

    Files of processes still alive (another writer at work) are kept. Returns the removed paths.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TMP.match(entry.name)
        if match and entry.is_file() and not process_alive(int(match.group("pid"))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
