"""A trained probe on disk, and the check that a store fits it.

A checkpoint folder holds::

    weights.safetensors   the ProbeModel state dict (input mean/std buffers included)
    goals.safetensors     "mean" [1, rep]: mean φ of the preferred completions' last-token states
                          in the TRAIN split; "kmeans" [K, rep] when goal prototypes K > 1
    split.json            {"train": [groups], "valid": [...], "test": [...]}
    metrics.json          training history and the validation evaluation
    config.json           "fit" (the nested FitConfig), "layer", "layers" (the input layers, side by side),
                          "model" (ProbeModel arguments) and
                          "store" {path, model_name, model_sha256, hidden_size, cache_key, layers}

Checkpoints written before the ablation options lack "layers", the model's
n_layers/mix/pooling and the fit options features/pooling/contrastive/pairs;
they load with the defaults, which are what those versions did.

The folder is claimed with `probekit.outputs.claim_output` (it never replaces a
folder or file probekit did not write). Each file is written under a
temporary name and renamed; config.json is removed first and written last, so
it is the commit record: a crash mid-save leaves a folder that loads as "not a
checkpoint" and that the same command may overwrite, never a mix of two runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probekit.errors import ProbekitError
from probekit.io import atomic_path, read_json, write_json
from probekit.outputs import OutputDir
from probekit.probe.network import ProbeModel
from probekit.store import Store

FORMAT = "probekit-probe"
FORMAT_VERSION = 1
FILES = ("weights.safetensors", "goals.safetensors", "split.json", "metrics.json", "config.json")


@dataclass
class Checkpoint:
    path: Path
    config: dict
    model: ProbeModel
    goals: dict[str, np.ndarray]
    split: dict[str, list[str]]
    metrics: dict

    @property
    def layer(self) -> int:
        return int(self.config["layer"])

    @property
    def layers(self) -> tuple[int, ...]:
        """The probe's input layers, in the order their states sit side by side."""
        return tuple(int(x) for x in self.config.get("layers", [self.config["layer"]]))

    def single_layer(self, what: str) -> int:
        """The input layer of a one-layer probe; `what` (a command reading live states of one layer) refuses others."""
        if len(self.layers) != 1:
            raise ProbekitError(f"checkpoint {self.path} reads layers {list(self.layers)} together; {what} supports one-layer probes only")
        return self.layer


def store_info(store) -> dict:
    """What a checkpoint remembers of the store it was trained on."""
    model = store.manifest.get("model", {})
    return {
        "path": str(Path(store.path).resolve()),
        "model_name": model.get("name"),
        "model_sha256": model.get("file_sha256"),
        "hidden_size": int(store.hidden_size),
        "cache_key": store.cache_key,
        "layers": list(store.layers),
    }


def save_checkpoint(out: OutputDir, model, config: dict, goals: dict[str, np.ndarray], split: dict[str, list[str]], metrics: dict) -> Checkpoint:
    """Write a checkpoint into a claimed output folder (see the module docstring) and return it."""
    out.file("config.json").unlink(missing_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out.file("weights.safetensors")) as tmp:
        save_file(state, str(tmp))
    with atomic_path(out.file("goals.safetensors")) as tmp:
        save_file({k: torch.as_tensor(np.asarray(v, dtype=np.float32)).contiguous() for k, v in goals.items()}, str(tmp))
    write_json(out.file("split.json"), split)
    write_json(out.file("metrics.json"), metrics)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "model": model.config()}
    write_json(out.file("config.json"), full)
    return Checkpoint(path=out.path, config=full, model=model, goals=goals, split=split, metrics=metrics)


def _damaged(path: Path, why: str) -> ProbekitError:
    return ProbekitError(f"damaged checkpoint: {path}: {why}")


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint folder written by `save_checkpoint`; any damage is one ProbekitError."""
    path = Path(path)
    if not path.is_dir():
        raise ProbekitError(f"{path}: no such checkpoint folder")
    missing = [f for f in FILES if not (path / f).exists()]
    if missing:
        raise ProbekitError(f"{path}: not a probekit checkpoint (missing {', '.join(missing)}); run `probekit fit` first")
    config = read_json(path / "config.json")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ProbekitError(f"{path}: not a probekit checkpoint (config.json has no format '{FORMAT}')")
    if config.get("format_version") != FORMAT_VERSION:
        raise ProbekitError(f"{path}: unsupported checkpoint format version {config.get('format_version')!r}")
    try:
        args = dict(config["model"])
        args["widths"] = tuple(args.get("widths", ()))
        [int(x) for x in config.get("layers", [config["layer"]])]
        dict(config["store"])
        model = ProbeModel(**args)
        model.load_state_dict(load_file(str(path / "weights.safetensors")))
        goals = {k: v.numpy() for k, v in load_file(str(path / "goals.safetensors")).items()}
        split, metrics = read_json(path / "split.json"), read_json(path / "metrics.json")
    except KeyError as exc:
        raise _damaged(path, f"config.json has no {exc}") from None
    except (SafetensorError, RuntimeError, OSError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise _damaged(path, (str(exc).splitlines() or [type(exc).__name__])[0]) from None
    except ProbekitError as exc:
        raise _damaged(path, str(exc)) from None
    if "mean" not in goals:
        raise _damaged(path, "goals.safetensors has no 'mean' goal")
    if not isinstance(split, dict) or not all(isinstance(split.get(k, []), list) for k in ("train", "valid", "test")):
        raise _damaged(path, "split.json is not {train: [...], valid: [...], test: [...]}")
    if not all(np.isfinite(g).all() for g in goals.values()):
        raise _damaged(path, "goals.safetensors holds NaN or infinite values")
    model.eval()
    return Checkpoint(path=path, config=config, model=model, goals=goals, split=split, metrics=metrics)


def check_compatible(ckpt: Checkpoint, store) -> None:
    """Refuse a store whose states the probe was not trained on (other model, missing layer, other width)."""
    info = ckpt.config.get("store", {})
    model = store.manifest.get("model", {})
    ck_sha, st_sha = info.get("model_sha256"), model.get("file_sha256")
    if ck_sha and st_sha:
        same = ck_sha == st_sha
    else:
        same = info.get("model_name") == model.get("name")
    if not same:
        raise ProbekitError(
            f"checkpoint {ckpt.path} was trained on states of model '{info.get('model_name')}' "
            f"(sha256 {str(ck_sha)[:12]}), but store {store.path} holds states of '{model.get('name')}' (sha256 {str(st_sha)[:12]})"
        )
    for layer in ckpt.layers:
        if layer not in store.layers:
            raise ProbekitError(f"checkpoint {ckpt.path} reads layer {layer}, but store {store.path} has layers {store.layers}")
    if int(info.get("hidden_size", ckpt.model.hidden_size)) != int(store.hidden_size) or ckpt.model.hidden_size != int(store.hidden_size):
        raise ProbekitError(f"checkpoint {ckpt.path} expects hidden size {ckpt.model.hidden_size}, but store {store.path} has {store.hidden_size}")


def training_store(ckpt: Checkpoint):
    """The store the checkpoint was fitted on, or None when it is gone or changed since."""
    path = Path(ckpt.config.get("store", {}).get("path", ""))
    if not (path / "manifest.json").exists():
        return None
    try:
        store = Store(path)
    except ProbekitError:
        return None
    return store if store.cache_key == ckpt.config["store"].get("cache_key") else None
