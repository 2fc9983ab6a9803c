"""`probekit serve`: a probe as an HTTP reward server (OpenRLHF's remote reward-model protocol and a plain JSON endpoint)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from probekit.serve.options import TOKEN_ENV, ServeOptions, check_bind
from probekit_cli.app import app
from probekit_cli.common import console, esc
from probekit_cli.options import with_config


@app.command()
@with_config(ServeOptions)
def serve(
    ckpt: Path = typer.Option(..., "--ckpt", help="Probe checkpoint folder (from `probekit fit`) to serve."),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, show_default=False,
                                        help="Bearer token every endpoint but /health then needs (Authorization: Bearer TOKEN); required "
                                             "to listen beyond loopback. Prefer the environment variable: other users can read a "
                                             "command line (ps)."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    model: Optional[str] = typer.Option(None, help="Where the checkpoint's frozen model lives on this machine, if it moved (the same weights)."),
    baseline: Optional[Path] = typer.Option(None, help="A `probekit baseline` folder: answers also carry contrastive rewards (reward minus the "
                                                       "prompt's baseline mean), and /get_reward's rewards are the contrastive ones."),
    on_missing: str = typer.Option("error", help="With --baseline, a prompt that has none: error (the request gets 422) or zero (no "
                                                 "penalty; has_baseline false)."),
    config: ServeOptions = None,
) -> None:
    """Serve a probe's rewards over HTTP: POST /get_reward (OpenRLHF's remote reward model), POST /score (plain JSON), GET /health.

    Concurrent requests are batched into one forward. Stops on SIGTERM or Ctrl-C after finishing the requests in flight.
    """
    config.validate()
    check_bind(config.host, token)  # before torch and the model load: a refusal costs nothing
    from probekit.reward import RewardProbe
    from probekit.reward.baseline import ON_MISSING
    from probekit.serve.server import serve as run_server

    if on_missing not in ON_MISSING:
        raise typer.BadParameter(f"must be one of {', '.join(ON_MISSING)}, got '{on_missing}'", param_hint="--on-missing")
    rp = RewardProbe.load(ckpt, device=device, model=model, baseline=baseline, on_missing=on_missing)
    stats = run_server(rp, config, token=token, announce=_announcer(rp, ckpt, baseline, token is not None), log=_log)
    console.print(f"probekit serve: stopped after {stats.requests} requests in {stats.batches} batches", highlight=False)


def _announcer(rp, ckpt: Path, baseline: Path | None, with_token: bool) -> Callable[[str], None]:
    """The start-up lines: the URL alone on stdout (for scripts, with --port 0), what is served on stderr."""

    def announce(url: str) -> None:
        sys.stdout.write(url + "\n")
        sys.stdout.flush()
        extra = f", baseline {esc(baseline)}" if baseline is not None else ""
        console.print(f"[bold]probekit serve[/]: {esc(ckpt)} (model {esc(rp.loaded.name)}, template {esc(rp.spec.template)}, "
                      f"max length {rp.spec.max_length}{extra}) on {esc(url)}{' with a bearer token' if with_token else ''}: "
                      "POST /get_reward, POST /score, GET /health, GET /info; SIGTERM or Ctrl-C stops it",
                      highlight=False, soft_wrap=True)

    return announce


def _log(line: str) -> None:
    console.print(esc(line), highlight=False, soft_wrap=True)
