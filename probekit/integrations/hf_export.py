"""`probekit model export`: a model probekit loads, written as a complete Hugging Face folder for other people's tools.

The bundled models are GGUF files that probekit dequantises into a cache folder (`probekit.models`). That folder is
enough for probekit, not for the rest of the stack: its config.json has `"architectures": null` (transformers
drops the field when it builds a model from a GGUF), and TRL picks the model class from `config.architectures[0]`
(`trl.trainer.utils.create_model_from_path`), so passing it as a GRPO policy crashes; vLLM resolves its model class
the same way. The export is the model probekit reads, saved by transformers itself (`save_pretrained`) with the
fields those readers need:

    config.json              architectures set to the loaded class (e.g. LlamaForCausalLM), the dtype it is saved in
    model.safetensors        the weights (tied embeddings stored once, re-tied on load)
    generation_config.json   bos/eos/pad ids, so generation stops at the chat template's end of turn
    tokenizer files          tokenizer.json, tokenizer_config.json and the chat template (chat_template.jinja)
    probekit_export.json     where the weights came from (name, source, sha256, revision) and the dtype

so `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it with no extra
arguments and compute the logits probekit's loaded model computes. The folder follows the output rules
(`probekit.outputs`): claimed first, written as one set with config.json last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError

from probekit.errors import ProbekitError
from probekit.io import write_json
from probekit.models import LoadedModel, dtype_name, load_model, transformers_bars_hidden
from probekit.outputs import OutputDir

FORMAT = "probekit-model-export"
RECORD = "probekit_export.json"
CONFIG = "config.json"
# What save_pretrained writes for the supported models, claimed before the export (a user's file of one of these names
# is refused); a file it writes beyond these is checked against the folder before the set is committed.
OUTPUTS = (CONFIG, "generation_config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
           "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", RECORD)


@dataclass(frozen=True)
class Export:
    """What was exported: the loaded model's record and the files written."""

    name: str
    architecture: str
    dtype: str
    num_layers: int
    hidden_size: int
    files: tuple[str, ...]


def export_model(name: str, out: OutputDir, dtype: str = "float32", loaded: LoadedModel | None = None) -> Export:
    """Write model `name` (any name `probekit.models.load_model` takes) into the claimed folder `out`, in `dtype`.

    float32 by default: the bundled models' weights are dequantised to float32, so nothing is rounded; a smaller
    dtype halves the folder and rounds the weights. `loaded` is the model already loaded (then `name` and `dtype`
    only describe it).
    """
    loaded = loaded or load_model(name, device="cpu", dtype=dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    architecture = type(model).__name__
    model.config.architectures = [architecture]
    _set_generation_ids(model, tokenizer)
    staged = out.scratch("export")
    try:
        with transformers_bars_hidden():
            model.save_pretrained(staged)
    except SafetensorError as exc:  # a full disk or a file-size limit, as safetensors reports it (not an OSError)
        raise ProbekitError(f"{out.option} {out.path}: could not write the weights ({str(exc).splitlines()[0]})") from None
    tokenizer.save_pretrained(staged)
    write_json(staged / RECORD, {"format": FORMAT, "name": loaded.name, "source": _portable(loaded.source),
                                 "file_sha256": loaded.file_sha256, "revision": loaded.revision, "dtype": dtype_name(loaded.dtype),
                                 "architecture": architecture})
    files = sorted(p.name for p in staged.iterdir())
    if not (staged / "generation_config.json").is_file():
        raise ProbekitError(f"{name}: transformers wrote no generation_config.json for {architecture}")
    clash = next((f for f in files if f not in out.owned and (out.path / f).exists()), None)
    if clash is not None:
        raise ProbekitError(f"{out.option} {out.path}: would replace {out.path / clash}, which probekit did not write; choose another folder")
    with out.commit_set(last=(CONFIG,)):
        for f in files:
            os.replace(staged / f, out.file(f))
    return Export(loaded.name, architecture, dtype_name(loaded.dtype), loaded.num_layers, loaded.hidden_size, tuple(files))


def _set_generation_ids(model, tokenizer) -> None:
    """bos/eos/pad of the generation config from the model's config, pad falling back to the tokenizer's (probekit
    sets it to EOS where a tokenizer has none), so a sampler pads and stops as probekit's `generate` does."""
    gen = model.generation_config
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(gen, field, None) is None:
            setattr(gen, field, getattr(model.config, field, None))
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _portable(source: str) -> str:
    """A source path's file name (the machine's folders mean nothing elsewhere); a hub id or bundled name as is."""
    path = Path(source)
    return path.name if path.is_absolute() else source
