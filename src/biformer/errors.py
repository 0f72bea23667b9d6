"""Exceptions shown to users as one clear line by the command line."""


class CommandError(Exception):
    """A user-facing failure of a command: printed as one line, exit status 2."""
