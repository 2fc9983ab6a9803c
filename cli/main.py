"""Entry point of the `probekit` console script.

A `ProbekitError` (bad input, mismatching store, missing model) is printed as
one line and exits with status 2, and so is an `OSError` that no command
turned into one (a full disk, a permission problem): the user's environment,
not a bug. Ctrl-C prints `interrupted` (with what was kept and what a re-run
does, where the command says) and exits with status 130. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from probekit.errors import Interrupted, ProbekitError
from probekit_cli.app import app

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = ("probekit_cli.data_cmd", "probekit_cli.extract_cmd", "probekit_cli.fit_cmd", "probekit_cli.filter_cmd", "probekit_cli.demo_cmd", "probekit_cli.generate_cmd",
                   "probekit_cli.store_cmd", "probekit_cli.reward_cmd", "probekit_cli.serve_cmd", "probekit_cli.model_cmd")
for _name in COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a command module not written yet
        if exc.name != _name:
            raise


def _fail(label: str, message: str, status: int) -> None:
    """Print one line on stderr (the message escaped: file names may hold [brackets]) and exit."""
    from probekit_cli.common import console, esc

    console.print(f"[bold red]{label}[/]{esc(message)}", highlight=False, soft_wrap=True)
    sys.exit(status)


def _interrupted(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt among the causes of `exc` (typer turns Ctrl-C into `Exit(130)`), or None."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _what_was_kept(exc: BaseException | None) -> str:
    """The message of an `Interrupted` (what was kept, what a re-run does), as the rest of the line."""
    return f": {exc}" if isinstance(exc, Interrupted) and str(exc) else ""


def main() -> None:
    try:
        app()
    except ProbekitError as exc:
        _fail("error: ", str(exc), 2)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail("error: ", f"{where}{exc.strerror or exc}", 2)
    except KeyboardInterrupt as exc:
        _fail("interrupted", _what_was_kept(exc), 130)
    except SystemExit as exc:
        cause = _interrupted(exc) if exc.code == 130 else None
        if cause is not None:
            _fail("interrupted", _what_was_kept(cause), 130)
        raise


if __name__ == "__main__":
    main()
