"""The one exception type users see.

Anything raised as `ProbekitError` is printed by the CLI as a single line
(`error: ...`) with exit code 2 and no traceback; every other exception is a
bug and keeps its traceback.
"""


class ProbekitError(Exception):
    """A user-facing error: bad input, a mismatching store, a missing model."""


class ItemError(ProbekitError):
    """A ProbekitError about one item of a call (a record, a conversation, a prompt).

    It carries the item's `index` (0-based, within the call) and the `detail`
    without the position, so a caller that knows where the items came from
    (`probekit score`: a file's lines) names that place instead, without
    reading the message.
    """

    def __init__(self, index: int, detail: str, noun: str = "item", source: object = None):
        self.index, self.detail = index, detail
        at = f"{source}: " if source is not None else ""
        super().__init__(f"{at}{noun} {index + 1}: {detail}")


def where(path: object, line: int | None = None) -> str:
    """Format a location as `file:line` for error messages."""
    return f"{path}:{line}" if line is not None else f"{path}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying what was kept and what re-running the command does.

    A KeyboardInterrupt, so every `except KeyboardInterrupt` (and Python's own
    handling) treats it as one; the CLI prints its message with exit status 130.
    """
