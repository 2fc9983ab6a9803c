"""What turns text into a probe's input states: the record that makes a checkpoint usable without its training store.

A probe reads the states a frozen model computes for rendered, tokenised,
truncated text, rounded to the store's dtype. To score new text the way it
was trained (`probekit.reward.RewardProbe`, `probekit score`, `probekit
serve`), a checkpoint records all of it in config.json "inputs" (the input
layers are config.json's "layers"), copied from the training store's manifest
when `fit` saves it:

    model           name (a bundled name, folder, .gguf or hub id), source, sha256, revision, depth and width
    compute_dtype   the dtype the model ran in, and why (`dtype_choice`)
    storage_dtype   the dtype states were stored in (the probe saw states rounded to it)
    template        chat or raw, and `rendering`: the chat template's sha256, special-token handling and the
                    end-of-turn markers stripped from completions (`probekit.extract.render.template_record`)
    max_length      tokens kept per text (None: generated stores, which keep everything); truncation cuts the
                    prompt's left side first
    positions       which completion tokens were stored (a pooled probe pools over those)
    store_cache_key the training store's cache key

Checkpoints written before this record have none: `input_spec` rebuilds it from
the training store's manifest when that store is still where it was, and
otherwise says in one line what to pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field

from probekit.errors import ProbekitError
from probekit.io import validated
from probekit.store import Store

TRUNCATION = "left"  # `probekit.extract.render.encode`: the prompt's left side first, then the completion's beginning


class InputModel(BaseModel):
    """The frozen model a probe reads: enough to load it again (`name`) and to recognise it (`file_sha256`)."""

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())

    name: str
    source: Optional[str] = None
    file_sha256: Optional[str] = None
    revision: Optional[str] = None
    num_layers: Annotated[int, Field(ge=1)]
    hidden_size: Annotated[int, Field(ge=1)]


class InputSpec(BaseModel):
    """config.json "inputs" (see the module docstring)."""

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())

    model: InputModel
    compute_dtype: str
    dtype_choice: Optional[str] = None
    storage_dtype: str
    template: str
    rendering: Optional[dict] = None  # absent for stores extracted before it was recorded
    max_length: Optional[Annotated[int, Field(ge=2)]] = None
    truncation: str = TRUNCATION
    positions: str = "all"
    store_cache_key: str


def spec_of_store(store: Store) -> dict:
    """The "inputs" record of a probe fitted on `store` (from its manifest), as JSON; its layers are config.json's own."""
    m = store.manifest
    model = m.get("model", {})
    record = {
        "model": {k: model.get(k) for k in ("name", "source", "file_sha256", "revision", "num_layers", "hidden_size")},
        "compute_dtype": model.get("dtype") or "float32",
        "dtype_choice": model.get("dtype_choice"),
        "storage_dtype": m.get("dtype") or "float16",
        "template": m.get("template") or "raw",
        "rendering": m.get("rendering"),
        "max_length": m.get("max_length"),
        "truncation": TRUNCATION,
        "positions": m.get("positions") or "all",
        "store_cache_key": store.cache_key,
        "tokenizer": m.get("tokenizer"),
    }
    if record["model"]["num_layers"] is None:  # stores before the model's depth was recorded: the deepest layer is a bound
        record["model"]["num_layers"] = max(store.layers)
    record["model"]["hidden_size"] = int(store.hidden_size)
    return validated(InputSpec, record, store.path / "manifest.json").model_dump(mode="json")


def input_spec(ckpt, store: str | Path | None = None) -> InputSpec:
    """The checkpoint's "inputs"; for an older checkpoint, rebuilt from `store` or its training store's manifest."""
    recorded = ckpt.config.get("inputs")
    if recorded is not None:
        return validated(InputSpec, recorded, Path(ckpt.path) / "config.json")
    info = ckpt.config["store"]
    path = Path(store) if store is not None else Path(info["path"])
    try:
        found, why = Store(path), "another store now"
    except ProbekitError as exc:  # gone, or damaged: say which
        found, why = None, "gone" if not (path / "manifest.json").exists() else f"unreadable ({exc})"
    if found is None or found.cache_key != info.get("cache_key"):
        raise ProbekitError(f"checkpoint {ckpt.path} predates self-describing checkpoints and its training store {path} is "
                            f"{why}; pass the store it was fitted on (store=... / --store) or fit it again")
    return InputSpec(**spec_of_store(found))
