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
