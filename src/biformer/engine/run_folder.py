"""The output folder of a training run: a lock, atomic checkpoints, and ``best.pth`` kept honest.

Files (see docs/training.md): ``last.pth`` (the resumable training state), ``best.pth`` (the best
weights, with their description), ``best.safetensors`` (the same weights as plain tensors),
``config.json`` + ``model.safetensors`` (the final weights in the timm / Hugging Face layout,
written when training ends), ``metrics.csv``, ``summary.json``, ``tb/``, and ``.lock`` while a run
writes the folder. Every file is replaced atomically; a full disk leaves the previous file in
place and stops the run with one line (exit status 1).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import WEIGHTS_FORMAT, atomic_save, atomic_write, read_file, remove_orphans
from ..checkpoint.files import process_alive
from ..errors import CheckpointError, CommandError, InputError
from .paths import check_output_dir

__all__ = ["BEST", "LAST", "RunFolder", "all_finite"]

LAST, BEST, BEST_TENSORS, LOCK = "last.pth", "best.pth", "best.safetensors", ".lock"


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when every floating-point tensor of ``state_dict`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in state_dict.values()
               if t.is_floating_point())


class RunFolder:
    """``--out DIR`` of ``biformer train``, written by rank 0 only (``enabled``)."""

    def __init__(self, out: str, *, enabled: bool = True):
        self.path = Path(out)
        self.enabled = enabled
        self._locked = False

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- starting and ending -----------------------------------------------------------

    def open(self, say) -> None:
        """Check the folder can be written, take its lock, remove writers' leftovers."""
        if not self.enabled:
            return
        try:
            check_output_dir(self.path, what="--out")
        except InputError as err:
            raise CommandError(f"{err}; choose another --out") from None
        self._lock(say)
        removed = remove_orphans(self.path)
        if removed:
            say(f"removed {len(removed)} unfinished file(s) of an earlier killed run: "
                + ", ".join(p.name for p in removed))

    def _lock(self, say) -> None:
        lock = self.file(LOCK)
        try:
            owner = int(lock.read_text().split()[0]) if lock.exists() else None
        except (OSError, ValueError, IndexError):
            owner = None
        if owner is not None and owner != os.getpid() and process_alive(owner):
            raise CommandError(f"--out {self.path} is being written by another run (PID "
                               f"{owner}, {lock}); wait for it, stop it, or use another --out")
        if owner is not None and owner != os.getpid():
            say(f"taking over {lock} from process {owner}, which is no longer running")
        try:
            atomic_write(lock, lambda f: f.write(f"{os.getpid()}\n".encode()))
        except OSError as err:
            raise CommandError(f"--out {self.path} cannot be written ({err.strerror}); "
                               "choose another --out") from None
        self._locked = True

    def close(self) -> None:
        """Release the lock (when this process holds it)."""
        lock = self.file(LOCK)
        if self._locked:
            try:
                if lock.read_text().split()[0] == str(os.getpid()):
                    lock.unlink()
            except (OSError, IndexError):
                pass
            self._locked = False

    # ---- writing ---------------------------------------------------------------------

    def _write(self, name: str, write) -> None:
        try:
            write(self.file(name))
        except OSError as err:
            kept = "the previous file is kept" if self.file(name).exists() else "nothing written"
            full = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or str(err)
            raise CommandError(f"cannot write {self.file(name)}: {full}; {kept}; free space "
                               "and run the same command to resume", exit_status=1) from None

    def save_last(self, checkpoint: dict[str, Any]) -> None:
        if self.enabled:
            self._write(LAST, lambda p: atomic_save(checkpoint, p))

    def save_best(self, record: dict[str, Any], weights: dict[str, torch.Tensor],
                  extra: dict[str, Any]) -> None:
        """``best.pth`` (weights + ``record``) and ``best.safetensors`` (the weights alone)."""
        if not self.enabled:
            return
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        data = {**record, "format": WEIGHTS_FORMAT, "model": tensors, **extra}
        self._write(BEST, lambda p: atomic_save(data, p))
        meta = {"format": "pt", "epoch": str(extra.get("epoch")),
                "model_name": str(record.get("model_name"))}
        self._write(BEST_TENSORS, lambda p: atomic_write(p, lambda f: f.write(
            save(tensors, metadata=meta))))

    def best_epoch(self) -> int | None:
        """The epoch ``best.pth`` holds, or None when it is missing or unreadable."""
        path = self.file(BEST)
        if not path.is_file():
            return None
        try:
            epoch = read_file(path).get("epoch")
        except (CheckpointError, AttributeError, OSError):
            return None
        return int(epoch) if isinstance(epoch, int) else None
