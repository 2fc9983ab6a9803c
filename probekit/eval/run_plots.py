"""The figures of a fit and of a sweep: the training curve (fit's training.png) and AUROC vs λ per layer (sweep's summary.png).

Both read only what fit and sweep already record (the history in metrics.json,
the rows and baselines of results.json), so a figure can be redrawn from the
files alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from probekit.eval.plots import figure_title, pyplot, save_figure

# Trivial baselines drawn as horizontal lines on the sweep figure (name in results.json -> legend, style).
SWEEP_BASELINES = {"length": ("completion length", "--"), "logistic_last": ("logistic regression, last token", ":"),
                   "logistic_mean": ("logistic regression, mean-pooled", "-.")}


def plot_training(history: Sequence[dict], path: str | Path, *, best_epoch: int | None = None, about: dict | None = None) -> Path:
    """Loss per epoch (total, Bradley-Terry, contrastive) and pairwise accuracy on train and validation pairs, PNG.

    The validation curve is what early stopping reads: `best_epoch` (the
    weights kept) is marked on both panels; chance (0.5) is drawn beside the
    accuracies.
    """
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4.2))
    for key, label, style in (("loss_total", "total (BT + λ·contrastive)", "-"), ("loss_bt", "Bradley-Terry", "--"),
                              ("loss_contrastive", "contrastive", ":")):
        ys = [h.get(key) for h in history]
        if any(y for y in ys):
            ax_l.plot(epochs, [np.nan if y is None else y for y in ys], style, marker="o", ms=3, label=label)
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("mean training loss per batch")
    ax_l.set_title("training loss", fontsize=9)
    for key, label in (("train_pairwise_accuracy", "train pairs (fixed subset of 2,000)"), ("valid_pairwise_accuracy", "validation pairs")):
        ys = [h.get(key) for h in history]
        ax_a.plot(epochs, [np.nan if y is None else y for y in ys], marker="o", ms=3, label=label)
    ax_a.axhline(0.5, color="black", lw=0.6, label="chance")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylabel("pairwise accuracy (chosen > rejected)")
    ax_a.set_ylim(0.0, 1.02)
    ax_a.set_title("pairwise accuracy (early stopping reads validation)", fontsize=9)
    for ax in (ax_l, ax_a):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best epoch {best_epoch} (weights kept)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(figure_title("Training curve", **(about or {}), n=f"{len(epochs)} epochs"), fontsize=10, y=1.04)
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def plot_sweep(result: dict, path: str | Path, *, model: str | None = None, n: str | None = None) -> Path:
    """Reward AUROC vs λ, one panel per layer: each seed's run as a dot, mean ± std over seeds, the trivial baselines as lines.

    Runs that differ in other axes (widths, K, ablations) at the same λ and layer
    are pooled into one column; the title says how many runs each column holds.
    """
    plt = pyplot()
    goal = result["options"]["goals"][0]  # the reward AUROC does not depend on the goal: one row per run
    runs = [r for r in result["runs"] if r["goal"] == goal and r["auroc"] is not None]
    layers = sorted({r["layer"] for r in runs}, key=lambda v: (isinstance(v, str), str(v).zfill(12)))
    lams = sorted({r["lam"] for r in runs})
    ncols = min(4, max(1, len(layers)))
    nrows = (len(layers) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.6, 3.3 * nrows + 0.9), squeeze=False, sharey=True)
    xs = np.arange(len(lams))
    per_column = set()
    for ax, layer in zip(axes.flat, layers):
        for j, lam in enumerate(lams):
            vals = np.array([r["auroc"] for r in runs if r["layer"] == layer and r["lam"] == lam])
            if not len(vals):
                continue
            per_column.add(len(vals))
            jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.plot(j + jitter, vals, "o", color="tab:blue", alpha=0.45, ms=4)
            ax.errorbar([j], [vals.mean()], yerr=[vals.std(ddof=1) if len(vals) > 1 else 0.0], fmt="D", color="tab:blue",
                        ms=6, capsize=4, lw=1.5)
        for b in result.get("baselines") or []:
            if b["layer"] == layer and b["baseline"] in SWEEP_BASELINES and b.get("auroc_mean") is not None:
                label, style = SWEEP_BASELINES[b["baseline"]]
                ax.axhline(b["auroc_mean"], color="grey", ls=style, lw=1.2, label=label)
        ax.axhline(0.5, color="black", lw=0.6, label="chance")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xticks(xs, [f"{lam:g}" for lam in lams])
        ax.set_xlabel("λ (contrastive weight)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"reward AUROC ({result['options']['split']} split)")
    first = axes[0, 0]
    first.plot([], [], "o", color="tab:blue", alpha=0.45, label="one run (seed)")
    first.errorbar([], [], yerr=[], fmt="D", color="tab:blue", capsize=4, label="mean ± std over seeds")
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, -0.02))
    runs_each = "/".join(map(str, sorted(per_column))) or "0"
    fig.suptitle(figure_title("Sweep: reward AUROC vs λ per layer", model=model,
                              n=", ".join(x for x in (n, f"{runs_each} runs per point") if x)), fontsize=10, y=1.04)
    fig.tight_layout(rect=(0, 0.08 if nrows == 1 else 0.05, 1, 1))
    return save_figure(fig, path, dpi=110, bbox_inches="tight")
