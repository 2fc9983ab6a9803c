"""Fit, evaluate, save: the composition the `fit` and `sweep` commands run.

Each floor does one job (probe.train fits, evaluate measures, probe.checkpoint
saves); this module wires them, and claims the output folder before any work
so that a folder that may not be written (or that another process is writing)
fails in a second, not after training; the checkpoint's files are committed as
one set (`probekit.outputs.OutputDir.commit_set`).
"""

from __future__ import annotations

import time
from pathlib import Path

from probekit.config import FitConfig
from probekit.eval.context import make_context
from probekit.eval.evaluate import evaluate
from probekit.eval.plots import plot_prefix_auroc
from probekit.eval.run_plots import plot_training
from probekit.outputs import claim_output
from probekit.probe.checkpoint import save_checkpoint, store_info
from probekit.probe.inputs import spec_of_store
from probekit.probe.scoring import Scorer
from probekit.probe.train import prepare, train
from probekit.progress import Progress

CHECKPOINT_OUTPUTS = ("weights.safetensors", "goals.safetensors", "split.json", "metrics.json", "config.json", "prefix_auroc.png", "training.png")


def fit_probe(store, out: str | Path, config: FitConfig, *, overwrite: bool = False, progress: Progress | None = None,
              data=None, eval_split: str = "valid", baseline_cache: dict | None = None):
    """Train a probe on `store`, evaluate it on `eval_split`, save the checkpoint to `out` and return it.

    `data` (from `probekit.probe.train.prepare`) and `baseline_cache` let a
    sweep reuse the loaded layer and the baselines across runs.
    """
    config.validate()
    with claim_output(out, "fit", CHECKPOINT_OUTPUTS, overwrite=overwrite, inputs=[store.path, config.split.split_file]) as out_dir:
        t0 = time.time()
        data = data if data is not None else prepare(store, config)
        result = train(data, config, progress)
        train_info = {**result.info, "n_train_pairs": int(len(data.train_pairs)), "n_valid_pairs": int(len(data.valid_pairs)),
                      "history": result.history, "row_source": "memory" if data.source.in_memory else "stream",
                      "train_seconds": round(time.time() - t0, 3)}
        metrics: dict = {"train": train_info}
        if eval_split == "all" or data.split.get(eval_split):
            ctx = make_context(data.store, data.split, eval_split, n_boot=config.eval.n_boot, seed=config.run.seed,
                               length_bins=config.eval.length_bins)
            metrics[eval_split] = evaluate(Scorer(result.model, result.goals), ctx, data.source, layer=data.layer,
                                           baselines=config.eval.baselines, q_threshold=config.eval.q_threshold, baseline_cache=baseline_cache)
        train_info["seconds"] = round(time.time() - t0, 3)
        # One set: the checkpoint's files and its plot replace the previous ones together, config.json (the record) last.
        with out_dir.commit_set(last=("config.json",)):
            ckpt = save_checkpoint(out_dir, result.model, {"fit": config.to_dict(), "layer": data.layer, "layers": list(data.layers),
                                                           "store": store_info(data.store), "inputs": spec_of_store(data.store)},
                                  result.goals, data.split, metrics)
            about = {"model": store_info(data.store)["model_name"], "layer": data.layer, "lam": config.loss.lam}
            plot_training(result.history, out_dir.file("training.png"), best_epoch=result.info["best_epoch"], about=about)
            if eval_split in metrics:
                plot_prefix_auroc(metrics[eval_split], out_dir.file("prefix_auroc.png"), model=about["model"], lam=about["lam"])
            else:  # nothing evaluated: naming the plot without writing it removes an earlier run's
                out_dir.file("prefix_auroc.png")
    return ckpt
