"""Entry point of the `probekit` console script.

A `ProbekitError` (bad input, mismatching store, missing model) is printed as
one line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from cli.app import app
from probekit.errors import ProbekitError

# Each module registers its commands on `app` when imported.
COMMAND_MODULES = ("cli.data_cmd", "cli.extract_cmd", "cli.fit_cmd", "cli.filter_cmd", "cli.demo_cmd")
for _name in COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a command module not written yet
        if exc.name != _name:
            raise


def main() -> None:
    try:
        app()
    except ProbekitError as exc:
        from cli.common import console

        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
