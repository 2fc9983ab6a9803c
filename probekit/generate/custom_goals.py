"""Goals from a user's examples: steer toward "concise", "harmless" or any set of completions.

The paper conditions decoding on goal states such as "helpful" or "complex".
Here a goal is the mean φ of the final states of a set of example
completions, read by the frozen model exactly as `probekit extract` reads them
(same rendering, truncation and batching) at the checkpoint's layer, then
encoded by the checkpoint's probe: the same construction as the checkpoint's
own "mean" goal, over the user's examples instead of the preferred training
completions. A goal folder holds goal.safetensors ({name: [1, rep]}) and goal.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probekit.data.schema import read_trajectories
from probekit.errors import ProbekitError
from probekit.extract.options import ExtractOptions
from probekit.extract.render import encode, resolve_template
from probekit.extract.run import build_shard
from probekit.io import atomic_path, write_json

GOAL_FILES = ("goal.safetensors", "goal.json")


def goal_from_examples(ckpt, examples_path: str | Path, loaded, template: str = "auto", max_length: int = 1024,
                       skip_invalid: bool = False) -> tuple[np.ndarray, dict]:
    """(prototype [1, rep], info) from a trajectories JSONL of examples; no example is an error."""
    examples, n_skipped = read_trajectories(examples_path, skip_invalid=skip_invalid)
    if loaded.hidden_size != ckpt.model.hidden_size:
        raise ProbekitError(f"checkpoint {ckpt.path} expects hidden size {ckpt.model.hidden_size}, but model {loaded.name} has {loaded.hidden_size}")
    template = resolve_template(template, loaded.tokenizer)
    encoded = []
    for i, t in enumerate(examples):
        try:
            encoded.append(encode(t, loaded.tokenizer, template, max_length))
        except ProbekitError as exc:
            raise ProbekitError(f"{examples_path}: record {i + 1}: {exc}") from None
    opts = ExtractOptions(trajectories=Path(examples_path), out=Path("."), dtype="float32", max_length=max_length)
    shard = build_shard(examples, encoded, loaded, list(ckpt.layers), 0, opts)  # stride 0: the last token of each completion
    states = np.concatenate([shard.states[layer] for layer in ckpt.layers], axis=1)  # a multi-layer probe reads them side by side
    with torch.no_grad():
        z = ckpt.model.encode(torch.from_numpy(states)).numpy()
    info = {"examples": str(examples_path), "n_examples": len(examples), "n_skipped_invalid": n_skipped, "layer": ckpt.layer,
            "template": template, "checkpoint": str(ckpt.path), "n_truncated": int(shard.attrs["n_truncated"])}
    return z.mean(axis=0, keepdims=True).astype(np.float32), info


def write_goal(out, name: str, prototype: np.ndarray, info: dict) -> None:
    """Write a goal folder into a claimed output folder (`probekit.outputs.OutputDir`)."""
    with atomic_path(out.file("goal.safetensors")) as tmp:
        save_file({name: torch.from_numpy(np.ascontiguousarray(prototype, dtype=np.float32))}, str(tmp))
    write_json(out.file("goal.json"), {"name": name, **info})


def read_goal(path: str | Path) -> dict[str, np.ndarray]:
    """{name: prototype} from a goal folder written by `write_goal`."""
    path = Path(path)
    if not (path / "goal.safetensors").is_file():
        raise ProbekitError(f"{path}: not a goal folder (no goal.safetensors); make one with `probekit goal --from`")
    try:
        goals = {k: v.numpy() for k, v in load_file(str(path / "goal.safetensors")).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ProbekitError(f"{path}: damaged goal file ({str(exc).splitlines()[0]})") from None
    if not goals or not all(np.isfinite(g).all() for g in goals.values()):
        raise ProbekitError(f"{path}: damaged goal file (empty or non-finite)")
    return goals
