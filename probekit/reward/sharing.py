"""Sharing a probe: load one from the Hugging Face Hub, and save a clean folder (with a model card) to upload there.

`RewardProbe.load("org/name", revision=...)` downloads the checkpoint folder with `huggingface_hub.snapshot_download`
(only the checkpoint's files and its card), into the Hub cache, pinned to `revision` (a branch, tag or commit; a
commit is the reproducible choice). A cached snapshot loads offline (`HF_HUB_OFFLINE=1`); with no cached copy and no
network it is one line saying so. A path that exists is always the local folder.

`RewardProbe.save(dir)` writes what someone else needs to use the probe and nothing of this machine's: the weights
and goals as they are (same fingerprint, so baselines scored with the original still apply), split.json, metrics.json
and config.json with absolute paths reduced to file names (the training store is not shipped: the "inputs" record
says how text becomes the probe's inputs, so none is needed; an older checkpoint gets that record written in), and a
generated model card, README.md: the frozen model, the layers, the template, the training data and the metrics with
their group-bootstrap intervals. The folder follows the output rules (`probekit.outputs`), config.json last.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import huggingface_hub

from probekit.errors import ProbekitError
from probekit.io import atomic_path, write_json, write_text
from probekit.models import HUB_ID, hub_errors
from probekit.outputs import checkpoint_inputs, claim_output
from probekit.probe.checkpoint import FILES, Checkpoint
from probekit.probe.inputs import InputSpec

CARD = "README.md"
SHARED = (*FILES, CARD)
ESCAPED_BAR = r"\|"
NOT_SHIPPED = "(not shipped: {})"  # config.json store.path of a saved probe: the training store's folder name, no path
SCALE = ("The reward is the probe's logit, unbounded and meaningful in differences (a Bradley-Terry score: "
         "sigmoid(r_a - r_b) is the probability that a is preferred); per-token Q-values are cosines in [-1, 1].")


def checkpoint_folder(ckpt: str | Path, revision: str | None = None) -> Path:
    """The local folder of `ckpt`: a path as it is, or a Hub id ("org/name") downloaded at `revision`."""
    path = Path(ckpt).expanduser()
    if path.exists() or not HUB_ID.match(str(ckpt)):
        if revision is not None:
            raise ProbekitError(f"revision={revision!r} pins a Hub download, but checkpoint {ckpt} is a local path")
        return path
    try:
        return Path(huggingface_hub.snapshot_download(str(ckpt), revision=revision, allow_patterns=list(SHARED)))
    except hub_errors() as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        at = f" at revision {revision}" if revision else ""
        raise ProbekitError(f"checkpoint '{ckpt}': no such folder here, and the Hugging Face Hub could not give it{at} "
                            f"(offline, or no such repository or revision: {reason})") from None


def save_probe(ckpt: Checkpoint, spec: InputSpec, out: str | Path, overwrite: bool = False) -> Path:
    """Write the shareable folder of `ckpt` (read with `spec`) into `out`; see the module docstring."""
    config = portable_config(ckpt.config, spec)
    with claim_output(out, "save", SHARED, overwrite=overwrite, inputs=checkpoint_inputs(ckpt)) as target, \
            target.commit_set(last=("config.json",)):
        for name in ("weights.safetensors", "goals.safetensors", "split.json"):
            with atomic_path(target.file(name)) as tmp:
                shutil.copyfile(ckpt.path / name, tmp)
        write_json(target.file("metrics.json"), strip_paths(ckpt.metrics))
        write_text(target.file(CARD), model_card(config, ckpt, spec))
        write_json(target.file("config.json"), config)
    return Path(out)


def portable_config(config: dict, spec: InputSpec) -> dict:
    """config.json with the "inputs" record and no path of this machine, but the frozen model's name: it is what
    loads the model (a bundled name or Hub id works anywhere; a folder needs `model=` elsewhere, as any moved one)."""
    inputs = spec.model_dump(mode="json")
    name = inputs["model"]["name"]
    out = strip_paths({**config, "inputs": inputs})
    out["inputs"]["model"]["name"] = name
    out["store"]["path"] = NOT_SHIPPED.format(Path(config["store"]["path"]).name)
    return out


def strip_paths(obj: Any) -> Any:
    """`obj` (JSON) with every absolute path reduced to its last part."""
    if isinstance(obj, dict):
        return {k: strip_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip_paths(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and len(obj) > 1:
        return Path(obj).name
    return obj


def model_card(config: dict, ckpt: Checkpoint, spec: InputSpec) -> str:
    """The README.md of a saved probe: what it reads, how it was trained, how well it did, how to use it."""
    model, rendering = config["inputs"]["model"], spec.rendering or {}
    probe = config["model"]
    hub = model["name"] if HUB_ID.match(model["name"]) and not Path(model["name"]).exists() else None
    front = ["---", "library_name: probekit", "tags:", "- reward-model", "- probe", "- probekit"]
    front += [f"base_model: {hub}", "base_model_relation: adapter"] if hub else []
    lines = [*front, "---", "", f"# Reward probe on {model['name']}", "",
             f"A probekit reward probe: a small network on the frozen hidden states of **{model['name']}** at layer(s) "
             f"{', '.join(map(str, ckpt.layers))}, trained on preference pairs. {SCALE}", "",
             "## Use", "", "```python", "from probekit import RewardProbe", "",
             'rp = RewardProbe.load("THIS_FOLDER_OR_HUB_ID", device="auto")  # loads the frozen model below',
             'rp.score(["What is 2 + 3?"], ["2 + 3 = 5. A: 5"]).rewards', "",
             "from probekit.integrations.trl import reward_function",
             'trainer = GRPOTrainer(model=..., reward_funcs=[reward_function("THIS_FOLDER_OR_HUB_ID")], ...)  # TRL',
             "```", "",
             "## Frozen model", "", "| field | value |", "|---|---|",
             *_rows({"name": model["name"], "sha256": model.get("file_sha256"), "revision": model.get("revision"),
                     "layers": model["num_layers"], "width": model["hidden_size"],
                     "compute dtype": f"{spec.compute_dtype} ({spec.dtype_choice or 'as recorded'})",
                     "stored states": spec.storage_dtype}), "",
             "## Probe", "", "| field | value |", "|---|---|",
             *_rows({"input layers": ", ".join(map(str, ckpt.layers)), "pooling": probe.get("pooling", "last"),
                     "network": f"{probe.get('encoder', 'mlp')} {probe.get('widths', [])} -> {probe.get('rep_size')}, head {probe.get('head')}",
                     "goals": ", ".join(f"{k} ({len(v)})" for k, v in ckpt.goals.items()), "fingerprint": ckpt.fingerprint}), "",
             "## Inputs", "", "| field | value |", "|---|---|",
             *_rows({"template": spec.template, "chat template sha256": rendering.get("chat_template_sha256"),
                     "end-of-turn markers stripped": ", ".join(f"`{m}`" for m in rendering.get("end_of_turn_markers") or []) or None,
                     "max length": spec.max_length or "none", "truncation": f"{spec.truncation} (the prompt's left side first)",
                     "positions": spec.positions}), "",
             "## Training data", "", *_training(config, ckpt), "",
             "## Metrics", "", *_metrics(ckpt.metrics), ""]
    return "\n".join(lines)


def _rows(fields: dict) -> list[str]:
    """Markdown table rows; a `|` in a value (the `<|im_end|>` marker) is escaped so it stays in its cell."""
    return [f"| {k} | {'unknown' if v is None else str(v).replace('|', ESCAPED_BAR)} |" for k, v in fields.items()]


def _training(config: dict, ckpt: Checkpoint) -> list[str]:
    loss = (config.get("fit") or {}).get("loss") or {}
    groups = ", ".join(f"{len(v)} {k}" for k, v in ckpt.split.items())
    lines = [f"Fitted on a store of {config['inputs']['model']['name']} states (cache key `{config['inputs']['store_cache_key'][:16]}`), "
             f"split by group: {groups} groups."]
    if loss:
        lines.append(f"Loss: Bradley-Terry on the pairs + lambda {loss.get('lam')} x the goal-conditioned contrastive loss "
                     f"({loss.get('contrastive')}, K {loss.get('K')}; lambda 0 is pure Bradley-Terry).")
    return lines


def _metrics(metrics: dict) -> list[str]:
    """One table per evaluated split: each metric with its 95% group-bootstrap interval."""
    out: list[str] = []
    for split in ("test", "valid", "all"):
        ev = metrics.get(split)
        if not isinstance(ev, dict) or not isinstance(ev.get("probe"), dict):
            continue
        out += [f"On the {split} split ({ev.get('n_trajectories')} trajectories in {ev.get('n_groups')} groups, {ev.get('n_pairs')} pairs; "
                f"95% intervals from {ev.get('n_boot')} group-bootstrap resamples):", "",
                "| metric | value | 95% interval |", "|---|---|---|"]
        for key, label in (("pairwise_accuracy", "pairwise accuracy"), ("auroc", "AUROC (reward)"),
                           ("q_auroc_mean", "AUROC (Q, mean goal)"), ("q_auroc_kmeans", "AUROC (Q, k-means goals)")):
            m = ev["probe"].get(key)
            if isinstance(m, dict):
                out.append(f"| {label} | {_num(m.get('value'))} | [{_num(m.get('lo'))}, {_num(m.get('hi'))}] |")
        verdicts = {k: ev.get(k) for k in ("beats_baselines", "beats_logistic", "beats_length") if ev.get(k) is not None}
        if verdicts:
            out += ["", "Against the baselines evaluated beside it: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in verdicts.items()) + "."]
        out.append("")
    return out or ["No evaluation was recorded (metrics.json has none)."]


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"

