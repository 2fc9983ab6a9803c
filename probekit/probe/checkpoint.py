"""A trained probe on disk, and the checks that a store or a loaded model fits it.

A checkpoint folder holds::

    weights.safetensors   the ProbeModel state dict (input mean/std buffers included)
    goals.safetensors     "mean" [1, rep]: mean φ of the preferred completions' last-token states
                          in the TRAIN split; "kmeans" [K, rep] when goal prototypes K > 1
    split.json            {"train": [groups], "valid": [...], "test": [...]}
    metrics.json          training history and the validation evaluation
    config.json           "fit" (the nested FitConfig), "layer", "layers" (the input layers, side by side),
                          "model" (ProbeModel arguments),
                          "store" {path, model_name, model_sha256, hidden_size, cache_key, layers} and
                          "inputs": how text becomes the probe's inputs (`probekit.probe.inputs`)

The shape of each JSON file is declared once, below, as a pydantic model
(`CheckpointConfig`, `CheckpointSplit`, `CheckpointMetrics`), and checked both
when a checkpoint is saved and when it is loaded, so every command that takes
a checkpoint (fit's callers, eval, filter, generate --filter, steer, goal,
sweep) refuses a damaged or hand-edited one the same way: one line naming the
file and the field. Beyond the JSON shapes the loader checks what a reader
would otherwise trip over later: the input layers (a non-empty list of
integers >= 1 that holds `layer`, as many as the network reads, all in the
training store), the weights' tensor shapes against the architecture, and the
goals' [K, rep] shapes.

Checkpoints written before the ablation options lack "layers", the model's
n_layers/mix/pooling and the fit options features/pooling/contrastive/pairs;
they load with the defaults, which are what those versions did.

The folder is claimed with `probekit.outputs.claim_output` (it never replaces a
folder or file probekit did not write). Each file is written under a
temporary name and renamed; config.json is removed first and written last, so
it is the commit record: a crash mid-save leaves a folder that loads as "not a
checkpoint" and that the same command may overwrite, never a mix of two runs.

Two checks tie a checkpoint to the states it reads: `check_compatible` for a
store (eval, filter) and `check_model` for a loaded model whose states are
computed live (generate --filter, steer, goal --from); both compare the model
by its sha256 (by name where a sha256 is unknown) with one rule
(`_same_model`) and say so in one line naming both models.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probekit.errors import ProbekitError
from probekit.io import atomic_path, json_default, read_json, read_validated, sha256_file, validated, write_json
from probekit.outputs import OutputDir
from probekit.probe.goals import check_goal_arrays
from probekit.probe.inputs import InputSpec
from probekit.probe.network import ProbeModel
from probekit.store import Store

FORMAT = "probekit-probe"
FORMAT_VERSION = 1
FILES = ("weights.safetensors", "goals.safetensors", "split.json", "metrics.json", "config.json")

Positive = Annotated[int, Field(strict=True, ge=1)]  # a layer number (HF hidden_states numbering: 0, the embeddings, is no probe input), a width


class Record(BaseModel):
    """A JSON object of an on-disk format: types are strict (the string "7" is no layer) and unknown fields are kept."""

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())  # "model_name" is a field, not pydantic's


class StoreRecord(Record):
    """config.json "store": what the checkpoint remembers of the store it was trained on (`store_info`)."""

    path: str
    model_name: Optional[str]
    model_sha256: Optional[str]
    hidden_size: Positive
    cache_key: str
    layers: list[Positive] = Field(min_length=1)


class ProbeArgs(BaseModel):
    """config.json "model": the `ProbeModel` arguments (absent ones take the defaults older versions had)."""

    model_config = ConfigDict(strict=True, extra="forbid", protected_namespaces=())  # an unknown argument would be a TypeError in ProbeModel

    hidden_size: Positive
    encoder: str = "mlp"
    widths: list[Positive] = []
    rep_size: Positive = 128
    head: str = "linear"
    head_hidden: Positive = 64
    n_layers: Positive = 1
    mix: bool = False
    pooling: str = "last"

    def build(self) -> ProbeModel:
        return ProbeModel(**{**self.model_dump(), "widths": tuple(self.widths)})


class CheckpointConfig(Record):
    """config.json: the format tag, the input layers, the network's arguments, the training store and the fit options."""

    format: str
    format_version: int
    layer: Positive
    layers: Optional[list[Positive]] = Field(default=None, min_length=1)
    model: ProbeArgs
    store: StoreRecord
    fit: Optional[dict] = None
    inputs: Optional[InputSpec] = None  # absent in checkpoints written before it (`probekit.probe.inputs.input_spec`)

    @property
    def input_layers(self) -> list[int]:
        return list(self.layers or [self.layer])

    @model_validator(mode="after")
    def _layers_fit_the_network_and_the_store(self) -> CheckpointConfig:
        layers = self.input_layers
        if self.layer not in layers:
            raise ValueError(f"layer {self.layer} is not one of layers {layers}")
        if len(layers) != self.model.n_layers:
            raise ValueError(f"layers {layers} are {len(layers)}, but the network reads {self.model.n_layers} (model.n_layers)")
        if self.store.hidden_size != self.model.hidden_size:
            raise ValueError(f"store.hidden_size {self.store.hidden_size} differs from model.hidden_size {self.model.hidden_size}")
        absent = [x for x in layers if x not in self.store.layers]
        if absent:
            raise ValueError(f"layer {absent[0]} is not among the training store's layers {self.store.layers}")
        if self.inputs is not None and max(layers) > self.inputs.model.num_layers:
            raise ValueError(f"layer {max(layers)} is deeper than the model's {self.inputs.model.num_layers} layers (inputs.model.num_layers)")
        return self


class CheckpointSplit(Record):
    """split.json: the groups of each split."""

    train: list[str] = []
    valid: list[str] = []
    test: list[str] = []


class Interval(Record):
    """A metric with its bootstrap interval (`probekit.metrics`); undefined values are null."""

    value: Optional[float]
    lo: Optional[float]
    hi: Optional[float]


class Auroc(Interval):
    length_controlled: Optional[dict] = None


class ProbeEvaluation(Record):
    pairwise_accuracy: Interval
    auroc: Auroc
    q_auroc_mean: Optional[Auroc] = None
    q_auroc_kmeans: Optional[Auroc] = None
    error_localisation: Optional[dict] = None


class Evaluation(Record):
    """An evaluation (`probekit.eval.evaluate.evaluate`), as far as the readers of a checkpoint's metrics use it."""

    probe: ProbeEvaluation
    baselines: Optional[dict] = None
    beats_baselines: Optional[bool] = None
    beats_logistic: Optional[bool] = None
    beats_length: Optional[bool] = None


class TrainInfo(Record):
    best_epoch: int


class CheckpointMetrics(Record):
    """metrics.json: how training went and the evaluation of the split fit evaluated (a sweep compares runs on it)."""

    train: Optional[TrainInfo] = None
    valid: Optional[Evaluation] = None
    test: Optional[Evaluation] = None
    all: Optional[Evaluation] = None


@dataclass
class Checkpoint:
    path: Path
    config: dict  # config.json as written, checked against `CheckpointConfig`
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
        return tuple(int(x) for x in self.config.get("layers") or [self.config["layer"]])

    @property
    def about(self) -> dict:
        """What a figure's title names of this probe: the frozen model, the layer and λ (None where not recorded)."""
        lam = ((self.config.get("fit") or {}).get("loss") or {}).get("lam")
        return {"model": (self.config.get("store") or {}).get("model_name"), "layer": self.layer, "lam": lam}

    def single_layer(self, what: str) -> int:
        """The input layer of a one-layer probe; `what` (a command reading live states of one layer) refuses others."""
        if len(self.layers) != 1:
            raise ProbekitError(f"checkpoint {self.path} reads layers {list(self.layers)} together; {what} supports one-layer probes only")
        return self.layer

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of what the probe computes: its weights, its goals and its input layers.

        Outputs made with a checkpoint (a goal folder, a filter's chosen
        threshold) record it, so a later command can tell that they belong to
        this probe: a copy of the folder has the same fingerprint, a probe
        refitted in its place another.
        """
        h = hashlib.sha256()
        try:
            for name in ("weights.safetensors", "goals.safetensors"):
                h.update(sha256_file(self.path / name).encode())
        except OSError as exc:
            raise ProbekitError(f"checkpoint {self.path}: cannot read {name} ({exc.strerror or exc})") from None
        h.update(json.dumps(list(self.layers)).encode())
        return h.hexdigest()


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
    """Write a checkpoint into a claimed output folder (see the module docstring) and return it.

    What is written is checked as the loader checks it, first, so a checkpoint
    that would not load is never written.
    """
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "model": model.config()}
    for name, obj, model_of in (("config.json", full, CheckpointConfig), ("split.json", split, CheckpointSplit),
                                ("metrics.json", metrics, CheckpointMetrics)):
        validated(model_of, json.loads(json.dumps(obj, default=json_default)), out.path / name)  # as it will read back
    check_goal_arrays(goals, model.rep_size, out.path / "goals.safetensors")
    out.file("config.json").unlink(missing_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out.file("weights.safetensors")) as tmp:
        save_file(state, str(tmp))
    with atomic_path(out.file("goals.safetensors")) as tmp:
        save_file({k: torch.as_tensor(np.asarray(v, dtype=np.float32)).contiguous() for k, v in goals.items()}, str(tmp))
    write_json(out.file("split.json"), split)
    write_json(out.file("metrics.json"), metrics)
    write_json(out.file("config.json"), full)
    return Checkpoint(path=out.path, config=full, model=model, goals=goals, split=split, metrics=metrics)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or garbled one is one ProbekitError naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ProbekitError(f"{path}: not a readable safetensors file ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None


def _probe_network(path: Path, args: ProbeArgs) -> ProbeModel:
    """The network config.json describes, with the weights of weights.safetensors, whose tensors must be exactly its own."""
    model = args.build()
    weights = read_tensors(path / "weights.safetensors")
    expected = model.state_dict()
    absent, unknown = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if absent or unknown:
        what = f"lacks tensor '{absent[0]}'" if absent else f"has tensor '{unknown[0]}'"
        raise ProbekitError(f"{path / 'weights.safetensors'}: {what}, which config.json's network does not match")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ProbekitError(f"{path / 'weights.safetensors'}: tensor '{name}' has shape {list(weights[name].shape)}, "
                                f"but config.json's network needs {list(tensor.shape)}")
    model.load_state_dict(weights)
    return model


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint folder written by `save_checkpoint`; any damage is one ProbekitError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise ProbekitError(f"{path}: no such checkpoint folder")
    missing = [f for f in FILES if not (path / f).exists()]
    if "config.json" in missing:  # written last: without it the folder never was a checkpoint, or its save did not finish
        raise ProbekitError(f"{path}: not a probekit checkpoint (missing {', '.join(missing)}); run `probekit fit` first")
    try:
        raw = read_json(path / "config.json")
    except ProbekitError as exc:
        raise ProbekitError(f"damaged checkpoint: {exc}") from None
    if isinstance(raw, dict) and raw.get("format") != FORMAT:
        raise ProbekitError(f"{path}: not a probekit checkpoint (config.json has no format '{FORMAT}')")
    if isinstance(raw, dict) and raw.get("format_version") != FORMAT_VERSION:
        raise ProbekitError(f"{path}: unsupported checkpoint format version {raw.get('format_version')!r}")
    if missing:  # config.json is written last, so these were there once
        raise ProbekitError(f"damaged checkpoint: {path / missing[0]}: missing" + (f" (and {', '.join(missing[1:])})" if missing[1:] else ""))
    try:
        config = validated(CheckpointConfig, raw, path / "config.json")
        model = _probe_network(path, config.model)
        goals = {k: v.numpy() for k, v in read_tensors(path / "goals.safetensors").items()}
        check_goal_arrays(goals, model.rep_size, path / "goals.safetensors")
        if "mean" not in goals:
            raise ProbekitError(f"{path / 'goals.safetensors'}: has no 'mean' goal")
        split = read_validated(path / "split.json", CheckpointSplit).model_dump()
        metrics = read_json(path / "metrics.json")
        validated(CheckpointMetrics, metrics, path / "metrics.json")
    except ProbekitError as exc:
        raise ProbekitError(f"damaged checkpoint: {exc}") from None
    model.eval()
    return Checkpoint(path=path, config=raw, model=model, goals=goals, split=split, metrics=metrics)


def _same_model(recorded_name, recorded_sha, name, sha) -> bool:
    """Whether two records name one model: by sha256 when both know it (names differ with the path given), else by name."""
    return recorded_sha == sha if recorded_sha and sha else recorded_name == name


def _refuse_other_model(ckpt: Checkpoint, name, sha, other: str) -> None:
    info = ckpt.config["store"]
    if not _same_model(info.get("model_name"), info.get("model_sha256"), name, sha):
        raise ProbekitError(f"checkpoint {ckpt.path} was trained on states of model '{info.get('model_name')}' "
                            f"(sha256 {str(info.get('model_sha256'))[:12]}), but {other} '{name}' (sha256 {str(sha)[:12]})")


def check_compatible(ckpt: Checkpoint, store) -> None:
    """Refuse a store whose states the probe was not trained on (other model, missing layer, other width)."""
    model = store.manifest.get("model", {})
    _refuse_other_model(ckpt, model.get("name"), model.get("file_sha256"), f"store {store.path} holds states of")
    for layer in ckpt.layers:
        if layer not in store.layers:
            raise ProbekitError(f"checkpoint {ckpt.path} reads layer {layer}, but store {store.path} has layers {store.layers}")
    if ckpt.model.hidden_size != int(store.hidden_size):
        raise ProbekitError(f"checkpoint {ckpt.path} expects hidden size {ckpt.model.hidden_size}, but store {store.path} has {store.hidden_size}")


def check_model(ckpt: Checkpoint, loaded) -> None:
    """Refuse a loaded model (`probekit.models.LoadedModel`) whose live states the probe was not trained on.

    `check_compatible`'s twin for the commands that compute states as they go
    (generate --filter, steer, goal --from): the same model (by sha256, the
    rule eval and filter apply to a store's model), the probe's layers within
    the model's depth, the same width. Without it a probe of another model of
    the same width scores states it never saw, and exits 0.
    """
    _refuse_other_model(ckpt, loaded.name, loaded.file_sha256, "the loaded model (--model) is")
    deep = [layer for layer in ckpt.layers if layer > loaded.num_layers]
    if deep:
        raise ProbekitError(f"checkpoint {ckpt.path} reads layer {deep[0]}, but model '{loaded.name}' has layers 1..{loaded.num_layers}")
    if ckpt.model.hidden_size != int(loaded.hidden_size):
        raise ProbekitError(f"checkpoint {ckpt.path} expects hidden size {ckpt.model.hidden_size}, but model '{loaded.name}' has {loaded.hidden_size}")


def training_store(ckpt: Checkpoint):
    """The store the checkpoint was fitted on, or None when it is gone or changed since."""
    path = Path(ckpt.config["store"]["path"])
    if not (path / "manifest.json").exists():
        return None
    try:
        store = Store(path)
    except ProbekitError:
        return None
    return store if store.cache_key == ckpt.config["store"].get("cache_key") else None
