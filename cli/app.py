"""The Typer application object every command module registers on.

Command modules keep heavy imports (torch, transformers, h5py) inside their
functions so that `probekit --help` answers instantly.
"""

import typer

app = typer.Typer(
    name="probekit",
    help="Goal-conditioned reward probes on frozen language models: extract, fit, eval, sweep, filter, demo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Fetch public data sets (pinned, sha256-verified) and write trajectory/pair JSONL files: adapters for public data and a synthetic generator.", no_args_is_help=True)
app.add_typer(data_app, name="data")
