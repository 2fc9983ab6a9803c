"""`probekit baseline`: per-prompt baseline rewards, from k responses sampled with the frozen model or read from a file.

Shen et al. (2024) sample the baseline responses offline, once, from the SFT
policy. Here they come either from a samples file (the SFT policy's outputs in
any format `probekit score` reads, several per prompt) or from `probekit
generate` run with the probe's frozen model (`--samples k`), whose samples are
kept in the folder's `samples/`. Either way each response is scored by the
probe through the API (`RewardProbe.score`, as `score` and `serve` score the
policy's samples later), so the baseline and the reward it is subtracted
from are the same computation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from probekit.data.prompts import Prompt
from probekit.errors import ProbekitError
from probekit.generate.config import GenerateConfig
from probekit.generate.generation import generate
from probekit.progress import Progress
from probekit.reward.baseline import baseline_entries, write_baselines
from probekit.reward.reward_probe import RewardProbe
from probekit.reward.score_file import Item, iter_items

SAMPLES = "samples"  # generate's output folder inside a sampled baseline folder


def baseline_from_items(rp: RewardProbe, items: list[Item], out, source: str, progress: Progress | None = None, **info) -> dict:
    """Score the responses `items` (several per prompt) and write their per-prompt means into the claimed folder `out`."""
    if not items:
        raise ProbekitError(f"{source}: no baseline responses")
    prompts, completions = rp.split_messages([i.conversation for i in items])
    result = rp.score(prompts, completions, rendered=True, progress=progress)
    rows = baseline_entries(result.prompt_keys, prompts, result.rewards)
    write_baselines(out, rp.checkpoint.fingerprint, rows, source, n_responses=len(items), n_truncated=result.n_truncated, **info)
    ks = np.asarray([row["k"] for row in rows])
    return {"n_prompts": len(rows), "n_responses": len(items), "k_min": int(ks.min()), "k_max": int(ks.max()),
            "n_truncated": result.n_truncated, "mean_of_means": float(np.mean([row["mean"] for row in rows])),
            "std_of_means": float(np.std([row["mean"] for row in rows])), "mean_within_std": float(np.mean([row["std"] for row in rows]))}


def baseline_from_file(rp: RewardProbe, path: str | Path, out, progress: Progress | None = None) -> dict:
    """Baselines from a samples file (`probekit.reward.score_file` formats), grouped by rendered prompt."""
    return baseline_from_items(rp, list(iter_items(Path(path))), out, str(path), progress)


def sample_baseline(rp: RewardProbe, prompts: list[Prompt], out, config: GenerateConfig, *, overwrite: bool = False,
                    progress: Progress | None = None) -> dict:
    """Sample `config.samples` responses per prompt with the probe's frozen model (`probekit generate`, into
    out/samples/) and write their baselines into the claimed folder `out`."""
    config = dataclasses.replace(config, layers=str(min(rp.layers)), template=rp.spec.template)  # a small store; prompts as trained
    samples = out.path / SAMPLES
    generate(prompts, samples, config, loaded=rp.loaded, overwrite=overwrite, progress=progress)
    items = list(iter_items(samples / "trajectories.jsonl"))
    return baseline_from_items(rp, items, out, f"sampled: {config.samples} per prompt with {rp.loaded.name}", progress,
                               sampling={k: getattr(config, k) for k in ("samples", "max_new_tokens", "temperature", "top_p", "seed")})
