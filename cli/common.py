"""Helpers shared by the command modules: consoles and output modes.

Rich reads `[...]` in printed text as markup, and paths and names are the user's: a folder named `out[/]`
crashed a success message after all the work was done, and one named `[red]x[/red]` printed as `x`. So every
path, name or other value put into a console line goes through `esc`, and tables (`probekit_cli.layout`) draw
every title and cell as plain `Text`; only probekit's own styling (`[bold]...[/]`) stays markup.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from probekit.io import json_default

# Progress bars and tables go to stderr so that `--json` output on stdout stays parseable.
console = Console(stderr=True)


def emit_json(obj: Any) -> None:
    """Print one JSON document on stdout (for `--json`)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")


def esc(value: Any) -> str:
    """`value` as console text that prints as it is: a path or a name holding [brackets] is not markup."""
    return escape(str(value))
