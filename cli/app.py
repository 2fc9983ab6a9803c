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


THREADS_ENV = "PROBEKIT_THREADS"
MAX_THREADS = 4096  # far above any machine's cores; torch takes a C int and OpenMP starts every thread asked for


def thread_count(text: str, source: str) -> int:
    """The `--threads` value (given as `source`: the option or the variable) as an int in [0, MAX_THREADS]; one line otherwise."""
    from probekit.errors import ProbekitError

    try:
        n = int(text.strip())
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_THREADS:
        raise ProbekitError(f"{source}: must be a whole number from 0 (torch's default) to {MAX_THREADS} threads, got {text!r}")
    return n


@app.callback()
def _global_options(
    ctx: typer.Context,
    threads: str = typer.Option("0", "--threads", envvar=THREADS_ENV, metavar="N",
                                help="Torch CPU threads for the command (0 = torch's default, one per core; at most "
                                     f"{MAX_THREADS}). On a shared machine 1 avoids OpenMP spin-waits that can slow a run several times."),
) -> None:
    """Options for every command (given before the command's name: `probekit --threads 1 fit ...`)."""
    from_env = getattr(ctx.get_parameter_source("threads"), "name", None) == "ENVIRONMENT"
    n = thread_count(threads, f"${THREADS_ENV}" if from_env else "--threads")
    if n:
        import torch

        torch.set_num_threads(n)
