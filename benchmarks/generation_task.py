"""The generation benchmarks' task and probe (generation_study.py, run_generation.py, run_gpu.py), and their intervals.

The task: synthetic 1-step arithmetic, 2-shot, raw template, which the bundled model solves about a third of the
time (benchmarks/results/task_accuracy.json); its sampling settings; the layer-15 probe fitted on the states of
sampled training problems, with the online-stopping thresholds; bootstrap intervals over problems.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 48, "stop": "\n\n"}
N_BOOT = 2000


def boot_ci(per_problem: np.ndarray, seed: int = 0) -> dict:
    """Mean over problems with a 95 % bootstrap interval over problems (`per_problem` [G], seeds already averaged)."""
    from probekit.metrics import bootstrap_counts, percentile_interval

    x = np.asarray(per_problem, dtype=np.float64)
    counts = bootstrap_counts(len(x), N_BOOT, seed)
    lo, hi = percentile_interval(counts @ x / len(x))
    return {"mean": round(float(x.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def ratio_ci(num: np.ndarray, den: np.ndarray, seed: int = 0) -> dict:
    """sum(num) / sum(den) over problems with a bootstrap interval over problems."""
    from probekit.metrics import bootstrap_counts, percentile_interval

    counts = bootstrap_counts(len(num), N_BOOT, seed)
    lo, hi = percentile_interval((counts @ num) / (counts @ den))
    return {"mean": round(float(num.sum() / den.sum()), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def study_prompts(n_train: int, n_test: int) -> tuple[list, list]:
    """(training, test) prompts: synthetic 1-step, 2-shot problems; test problems never appear in training."""
    from probekit.data.synth import synth_prompts

    train = [dataclasses.replace(p, id=f"train-{p.id}") for p in synth_prompts(n_train, 1, 1, shots=2, seed=100)]
    seen = {p.prompt for p in train}
    test = [dataclasses.replace(p, id=f"test-{p.id}") for p in synth_prompts(n_test, 1, 1, shots=2, seed=0) if p.prompt not in seen]
    return train, test


def study_config(samples: int, model_dtype: str):
    """The generation settings of the study (and of benchmarks/run_generation.py)."""
    from probekit.generate.config import GenerateConfig

    return GenerateConfig(samples=samples, template="raw", layers="15", answer="synth", batch_size=32, model_dtype=model_dtype, **SAMPLING)


def fit_study_probe(loaded, train: list, cfg, work: Path) -> tuple:
    """Sample the training problems (seed 1000), fit the layer-15 probe on their states, and choose the online thresholds.

    Returns (the training generate result, checkpoint, auto_threshold's answer, {"auto": t, "q20": t}): `auto` is the
    filter's choice on the probe's validation groups, q20 the 20 % quantile of the training samples' minimum Q.
    """
    from probekit.config import FitConfig
    from probekit.filter.early_stop import min_signal
    from probekit.filter.filtering import auto_threshold
    from probekit.generate.generation import generate
    from probekit.pipeline import fit_probe
    from probekit.probe.scoring import Scorer, score_store
    from probekit.store import Store

    first = generate(train, work / "train", dataclasses.replace(cfg, seed=1000), loaded=loaded, overwrite=True)
    store = Store(first.out / "store")
    ckpt = fit_probe(store, work / "probe", FitConfig().vary(layer=15, valid_frac=0.25, test_frac=0.0), overwrite=True)
    scores = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), 15)
    mins = min_signal(scores.offsets, scores.positions, scores.q["mean"], 5)
    auto = auto_threshold(ckpt, "mean", 5)
    return first, ckpt, auto, {"auto": auto["threshold"], "q20": float(np.quantile(mins[np.isfinite(mins)], 0.2))}
