"""The filter's figures: the accuracy / tokens-saved frontier and the per-token signal along trajectories."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from probekit.eval.plots import pyplot, save_figure
from probekit.filter.early_stop import FilterResult
from probekit.filter.voting import Ballot
from probekit.probe.scoring import Scores


def plot_frontier(path: Path, metrics: dict) -> None:
    """Report-group accuracy vs share of tokens saved: one point per threshold, plus baselines."""
    plt = pyplot()
    rows = sorted(metrics["thresholds"], key=lambda r: r["report"]["tokens_saved_share"])
    x = [r["report"]["tokens_saved_share"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(x, [r["report"]["accuracy_filtered"] for r in rows], "o-", label=f"{metrics['signal']} filter (one point per threshold)")
    ax.plot([r["report"]["baselines"]["random"]["tokens_saved_share"] for r in rows],
            [r["report"]["baselines"]["random"]["accuracy"] for r in rows], "s--", label="random drops, same budget")
    ax.plot([r["report"]["baselines"]["length"]["tokens_saved_share"] for r in rows],
            [r["report"]["baselines"]["length"]["accuracy"] for r in rows], "^:", label="length cap, same budget")
    ax.axhline(metrics["report"]["accuracy_majority"], color="grey", lw=1, label="majority vote, no filter")
    rep = metrics["report"]
    ax.plot([rep["tokens_saved_share"]], [rep["accuracy_filtered"]], "*", ms=14, color="red",
            label=f"chosen threshold {metrics['chosen_threshold']:.3g}")
    ax.set_xlabel("share of completion tokens saved")
    ax.set_ylabel("majority-vote accuracy (report groups)")
    ax.set_title("Filtering frontier")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_curves(
    path: Path, scores: Scores, sig: np.ndarray, res: FilterResult, ballot: Ballot, report_groups: Sequence[str],
    threshold: float, skip_first: int, signal: str, seed: int, per_class: int = 4,
) -> None:
    """Signal along a few correct (label 1) and incorrect (label 0) report trajectories."""
    plt = pyplot()
    rep = ballot.group_mask(report_groups)[ballot.group]
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, color in ((1, "tab:green"), (0, "tab:red")):
        cand = np.flatnonzero(rep & (ballot.labels == label))
        for j, i in enumerate(np.sort(rng.permutation(cand)[:per_class])):
            a, b = scores.offsets[i], scores.offsets[i + 1]
            ax.plot(scores.positions[a:b], sig[a:b], color=color, alpha=0.75, lw=1,
                    label=("correct (label 1)" if label else "incorrect (label 0)") if j == 0 else None)
            if not res.kept[i]:
                ax.plot([res.first_drop_position[i]], [sig[a:b][scores.positions[a:b] == res.first_drop_position[i]][0]], "x", color=color)
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.axvline(skip_first, color="grey", ls=":", lw=1, label=f"skip_first {skip_first}")
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel("Q-value (cosine to goal)" if signal == "q" else "reward head score")
    ax.set_title("Per-token signal (x = drop point)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
