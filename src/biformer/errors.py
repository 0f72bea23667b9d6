"""Exceptions a user sees, and how the command line turns them into one line."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CommandError",
    "InputError",
    "MissingExtraError",
    "MissingFileError",
    "one_line",
    "require",
]


class CommandError(Exception):
    """A user-facing failure of a command: printed as one line, exit status 2 (or the one
    given: 1 for a failure of the machine, such as a full disk, rather than of the input)."""

    def __init__(self, message: str, *, exit_status: int = 2):
        super().__init__(message)
        self.exit_status = exit_status


class InputError(ValueError):
    """A bad value from the user (a model name, an option, a file) rather than a bug; the
    command line prints it as one line (exit status 2), the Python API raises it as is."""


class MissingFileError(FileNotFoundError, InputError):
    """A file named by the user does not exist (the message names it)."""


class MissingExtraError(InputError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to install."""


def require(module: str, extra: str, what: str):
    """Import and return ``module``, or raise ``MissingExtraError`` naming ``pip install
    'biformer[extra]'`` (``what``: the feature that needs it)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{what} needs {module.split('.')[0]}, which is not installed: pip install "
            f"'biformer[{extra}]'") from None


class CheckpointError(InputError):
    """A checkpoint that cannot be read, or whose weights do not fit the model.

    The first line of the message says what is wrong with which file; further lines (Python
    API) list the keys and the probable cause, which ``one_line`` folds in for the command line.
    """


def one_line(err: BaseException) -> str:
    """``err`` as one line: its first line, plus its 'Probable cause' line when it has one."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        filename = getattr(err, "filename", None)
        return f"file not found: {filename}" if filename else type(err).__name__
    cause = next((ln for ln in lines[1:] if ln.startswith("Probable cause")), None)
    if cause is None:
        return " ".join(lines) if len(lines) <= 2 else lines[0]
    cause = cause.removeprefix("Probable cause:").strip().split(". Create ")[0].rstrip(".")
    return f"{lines[0].rstrip(':')}: {cause}"
