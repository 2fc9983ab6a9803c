"""Goals from a user's examples: steer toward "concise", "harmless" or any set of completions.

The paper conditions decoding on goal states such as "helpful" or "complex".
Here a goal is the mean φ of the final states of a set of example
completions, read by the frozen model exactly as `probekit extract` reads them
(same rendering, truncation and batching) at the checkpoint's layer, then
encoded by the checkpoint's probe: the same construction as the checkpoint's
own "mean" goal, over the user's examples instead of the preferred training
completions. A goal folder holds goal.safetensors ({name: [1, rep]}) and
goal.json (`GoalRecord`: the name, the checkpoint and layers it was built
with, that checkpoint's fingerprint, and where the examples came from). A
goal means something only to the probe that encoded it, so `read_goal`
refuses a folder built with another checkpoint (another fingerprint) or other
layers, and prototypes that are not [K, rep] of that probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from pydantic import Field, field_validator
from safetensors.torch import save_file

from probekit.config import GOAL_KINDS
from probekit.data.schema import read_trajectories
from probekit.errors import ProbekitError
from probekit.extract.live import live_states
from probekit.extract.render import Rendering, encode_all, resolve_template
from probekit.io import atomic_path, read_validated, validated, write_json
from probekit.probe.checkpoint import Positive, Record, check_model, read_tensors
from probekit.probe.goals import GoalIndex, check_goal_arrays, ordered_kinds

GOAL_FILES = ("goal.safetensors", "goal.json")


def check_goal_name(name: str) -> str:
    """A goal's name (`probekit goal --name`, goal.json): not blank, and not one of the checkpoint's own goals, which it would hide."""
    if not name.strip() or name in GOAL_KINDS:
        raise ProbekitError(f"goal name '{name}': choose a name other than the checkpoint's own goals ({', '.join(GOAL_KINDS)})")
    return name


class GoalRecord(Record):
    """goal.json: what the prototype is and what it was built with (older folders lack layers and the fingerprint)."""

    name: str
    checkpoint: str
    layer: Positive
    layers: Optional[list[Positive]] = Field(default=None, min_length=1)
    checkpoint_fingerprint: Optional[str] = None

    @field_validator("name")
    @classmethod
    def _name_is_free(cls, name: str) -> str:
        try:
            return check_goal_name(name)
        except ProbekitError as exc:
            raise ValueError(str(exc)) from None


def goal_from_examples(ckpt, examples_path: str | Path, loaded, template: str = "auto", max_length: int = 1024,
                       skip_invalid: bool = False) -> tuple[np.ndarray, dict]:
    """(prototype [1, rep], info) from a trajectories JSONL of examples; no example is an error."""
    examples, n_skipped = read_trajectories(examples_path, skip_invalid=skip_invalid)
    check_model(ckpt, loaded)
    template = resolve_template(template, loaded.tokenizer)
    encoded = encode_all(examples, loaded.tokenizer, Rendering.of(loaded.tokenizer, template, max_length), examples_path)
    shard = live_states(examples, encoded, loaded, ckpt.layers, stride=0, dtype="float32")  # stride 0: the last token of each completion
    states = np.concatenate([shard.states[layer] for layer in ckpt.layers], axis=1)  # a multi-layer probe reads them side by side
    with torch.no_grad():
        z = ckpt.model.encode(torch.from_numpy(states)).numpy()
    info = {"examples": str(examples_path), "n_examples": len(examples), "n_skipped_invalid": n_skipped, "layer": ckpt.layer,
            "layers": list(ckpt.layers), "template": template, "checkpoint": str(ckpt.path), "checkpoint_fingerprint": ckpt.fingerprint,
            "n_truncated": int(shard.attrs["n_truncated"])}
    return z.mean(axis=0, keepdims=True).astype(np.float32), info


def describe_goal(ckpt, prototype: np.ndarray, info: dict) -> dict:
    """What a researcher checks about a goal just built: how many examples made it, its norm beside the norm of
    the checkpoint's own mean goal (same φ space, so the scale compares), and its cosine to each of the
    checkpoint's goals (kmeans: the best over its prototypes). A cosine near 1 means the examples point where
    the preferred training completions already point, so steering toward it differs little from --goal mean."""
    proto = np.asarray(prototype, dtype=np.float32).reshape(1, -1)
    return {"n_examples": info["n_examples"], "n_truncated": info["n_truncated"], "n_skipped_invalid": info["n_skipped_invalid"],
            "norm": float(np.linalg.norm(proto)), "checkpoint_mean_goal_norm": float(np.linalg.norm(ckpt.goals["mean"][0])),
            "cosine_to_checkpoint_goals": {kind: float(GoalIndex(ckpt.goals[kind]).q_values(proto)[0]) for kind in ordered_kinds(ckpt.goals)}}


def write_goal(out, name: str, prototype: np.ndarray, info: dict) -> None:
    """Write a goal folder into a claimed output folder (`probekit.outputs.OutputDir`); goal.json is checked as `read_goal` reads it."""
    record = {"name": name, **info}
    validated(GoalRecord, record, out.path / "goal.json")
    with atomic_path(out.file("goal.safetensors")) as tmp:
        save_file({name: torch.from_numpy(np.ascontiguousarray(prototype, dtype=np.float32))}, str(tmp))
    write_json(out.file("goal.json"), record)


def read_goal(path: str | Path, ckpt) -> dict[str, np.ndarray]:
    """{name: prototype} from a goal folder written by `write_goal`, for steering with the checkpoint `ckpt`.

    The folder must have been built with that checkpoint: the same
    fingerprint (folders written before it was recorded: the same checkpoint
    path) and the same layers; its prototype must be [K, rep] of that probe.
    Anything else is one ProbekitError naming the file.
    """
    path = Path(path)
    missing = [f for f in GOAL_FILES if not (path / f).is_file()]
    if missing:
        raise ProbekitError(f"{path}: not a goal folder (no {', '.join(missing)}); make one with `probekit goal --from`")
    record = read_validated(path / "goal.json", GoalRecord)
    goals = {k: v.numpy() for k, v in read_tensors(path / "goal.safetensors").items()}
    check_goal_arrays(goals, ckpt.model.rep_size, path / "goal.safetensors")
    if set(goals) != {record.name}:
        raise ProbekitError(f"{path / 'goal.safetensors'}: holds goals {sorted(goals)}, but goal.json names '{record.name}'")
    if record.checkpoint_fingerprint is not None:
        same = record.checkpoint_fingerprint == ckpt.fingerprint
    else:
        same = Path(record.checkpoint).resolve() == Path(ckpt.path).resolve()
    layers = record.layers or [record.layer]
    if not same or layers != list(ckpt.layers):
        raise ProbekitError(f"{path / 'goal.json'}: goal '{record.name}' was built with checkpoint {record.checkpoint} (layers {layers}), "
                            f"not with {ckpt.path} (layers {list(ckpt.layers)}); build it for this one with `probekit goal --ckpt {ckpt.path}`")
    return goals
