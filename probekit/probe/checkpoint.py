"""A trained probe on disk, and the check that a store fits it.

A checkpoint folder holds::

    weights.safetensors   the ProbeModel state dict (input mean/std buffers included)
    config.json           every hyperparameter, "layer", "model" (ProbeModel arguments) and
                          "store" {path, model_name, model_sha256, hidden_size, cache_key, layers}
    goals.safetensors     "mean" [1, rep]: mean φ of the preferred completions' last-token states
                          in the TRAIN split; "kmeans" [K, rep] when goal prototypes K > 1
    split.json            {"train": [groups], "valid": [...], "test": [...]}
    metrics.json          training history and the validation evaluation

The folder is written under a temporary name next to its destination and
renamed into place, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from probekit.errors import ProbekitError
from probekit.io import read_json, write_json

if TYPE_CHECKING:  # torch is imported lazily at run time
    from probekit.probe.model import ProbeModel

FORMAT = "probekit-probe"
FORMAT_VERSION = 1
FILES = ("weights.safetensors", "config.json", "goals.safetensors", "split.json", "metrics.json")


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

    def goal(self, kind: str = "mean") -> np.ndarray:
        """Goal prototypes [G, rep] of one kind ("mean" or "kmeans")."""
        if kind not in self.goals:
            raise ProbekitError(f"{self.path}: no '{kind}' goal in this checkpoint (has: {', '.join(sorted(self.goals))}); fit with --goal-prototypes K > 1 for kmeans")
        return self.goals[kind]


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


def save_checkpoint(out_dir, model, config: dict, goals: dict[str, np.ndarray], split: dict[str, list[str]], metrics: dict) -> Path:
    """Write a checkpoint folder atomically and return its path.

    An existing checkpoint at `out_dir` is replaced; any other non-empty folder is refused.
    """
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "config.json").exists())):
        raise ProbekitError(f"{out_dir}: exists and is not a probekit checkpoint; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "weights.safetensors"))
        save_file({k: torch.as_tensor(np.asarray(v, dtype=np.float32)).contiguous() for k, v in goals.items()}, str(tmp / "goals.safetensors"))
        cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "model": model.config()}
        write_json(tmp / "config.json", cfg)
        write_json(tmp / "split.json", split)
        write_json(tmp / "metrics.json", metrics)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(src: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(src, dest)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.replace(dest, trash / "old")
    os.replace(src, dest)
    shutil.rmtree(trash, ignore_errors=True)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint folder written by `save_checkpoint`."""
    from safetensors.torch import load_file

    from probekit.probe.model import ProbeModel

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
    args = dict(config["model"])
    args["widths"] = tuple(args.get("widths", ()))
    model = ProbeModel(**args)
    try:
        model.load_state_dict(load_file(str(path / "weights.safetensors")))
        goals = {k: v.numpy() for k, v in load_file(str(path / "goals.safetensors")).items()}
    except (RuntimeError, OSError, ValueError) as exc:
        raise ProbekitError(f"{path}: damaged checkpoint ({str(exc).splitlines()[0]})") from None
    if "mean" not in goals:
        raise ProbekitError(f"{path}: damaged checkpoint (goals.safetensors has no 'mean')")
    model.eval()
    return Checkpoint(path=path, config=config, model=model, goals=goals, split=read_json(path / "split.json"), metrics=read_json(path / "metrics.json"))


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
    layer = int(ckpt.config["layer"])
    if layer not in store.layers:
        raise ProbekitError(f"checkpoint {ckpt.path} reads layer {layer}, but store {store.path} has layers {store.layers}")
    if int(info.get("hidden_size", ckpt.model.hidden_size)) != int(store.hidden_size) or ckpt.model.hidden_size != int(store.hidden_size):
        raise ProbekitError(f"checkpoint {ckpt.path} expects hidden size {ckpt.model.hidden_size}, but store {store.path} has {store.hidden_size}")
