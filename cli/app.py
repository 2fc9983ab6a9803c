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
store_app = typer.Typer(help="Check stores of cached hidden states written by `probekit extract` or `probekit generate`.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@app.callback()
def _global_options(
    threads: int = typer.Option(0, "--threads", envvar="PROBEKIT_THREADS", min=0,
                                help="Torch CPU threads for the command (0 = torch's default, one per core). On a shared machine "
                                     "1 avoids OpenMP spin-waits that can slow a run several times."),
) -> None:
    """Options for every command (given before the command's name: `probekit --threads 1 fit ...`)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
