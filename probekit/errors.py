"""The one exception type users see.

Anything raised as `ProbekitError` is printed by the CLI as a single line
(`error: ...`) with exit code 2 and no traceback; every other exception is a
bug and keeps its traceback.
"""


class ProbekitError(Exception):
    """A user-facing error: bad input, a mismatching store, a missing model."""


def where(path: object, line: int | None = None) -> str:
    """Format a location as `file:line` for error messages."""
    return f"{path}:{line}" if line is not None else f"{path}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying what was kept and what re-running the command does.

    A KeyboardInterrupt, so every `except KeyboardInterrupt` (and Python's own
    handling) treats it as one; the CLI prints its message with exit status 130.
    """
