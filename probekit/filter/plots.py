"""The filter's figures: the accuracy / tokens-saved frontier and the per-token signal along trajectories."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from probekit.eval.plots import figure_title, pyplot, save_figure
from probekit.filter.curves import MIN_TRAJECTORIES, class_band
from probekit.filter.early_stop import FilterResult
from probekit.filter.voting import Ballot
from probekit.probe.scoring import Scores


def plot_frontier(path: Path, metrics: dict, about: dict | None = None) -> None:
    """Report-group accuracy vs share of tokens saved: one point per threshold with its band over problems, plus baselines.

    `about` (model, layer, lam) goes into the title with the number of report problems.
    """
    plt = pyplot()
    rows = sorted(metrics["thresholds"], key=lambda r: r["report"]["tokens_saved_share"])
    rep = metrics["report"]
    x = [r["report"]["tokens_saved_share"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    (line,) = ax.plot(x, [r["report"]["accuracy_filtered"] for r in rows], "o-", ms=4, label=f"{metrics['signal']} filter (one point per threshold)")
    if all("accuracy_filtered_lo" in r["report"] for r in rows):
        ax.fill_between(x, [r["report"]["accuracy_filtered_lo"] for r in rows], [r["report"]["accuracy_filtered_hi"] for r in rows],
                        color=line.get_color(), alpha=0.18, lw=0, label="95% interval, bootstrap over problems")
    random = [r["report"]["baselines"]["random"] for r in rows]
    ax.errorbar([b["tokens_saved_share"] for b in random], [b["accuracy"] for b in random], yerr=[b["accuracy_std"] for b in random],
                fmt="s--", ms=4, capsize=2, lw=1, label="random drops, same budget (± std over seeds)")
    ax.plot([r["report"]["baselines"]["length"]["tokens_saved_share"] for r in rows],
            [r["report"]["baselines"]["length"]["accuracy"] for r in rows], "^:", ms=4, label="length cap, same budget")
    ax.axhline(rep["accuracy_majority"], color="grey", lw=1, label="majority vote, no filter")
    if rep.get("accuracy_majority_lo") is not None:
        ax.axhspan(rep["accuracy_majority_lo"], rep["accuracy_majority_hi"], color="grey", alpha=0.1, lw=0)
    ax.plot([rep["tokens_saved_share"]], [rep["accuracy_filtered"]], "*", ms=14, color="red",
            label=f"chosen threshold {metrics['chosen_threshold']:.3g}")
    ax.set_xlabel("share of completion tokens saved (official count)")
    ax.set_ylabel("majority-vote accuracy (report problems)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(figure_title("Filtering frontier", **(about or {}), n=f"{rep['n_groups']} report problems, {rep['n_trajectories']} trajectories"),
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_curves(
    path: Path, scores: Scores, sig: np.ndarray, res: FilterResult, ballot: Ballot, report_groups: Sequence[str],
    threshold: float, skip_first: int, signal: str, seed: int, error_token: np.ndarray | None = None, about: dict | None = None,
) -> None:
    """Mean signal ± band per class (correct / incorrect report trajectories), from the start and, where the first wrong
    token is known, aligned at it; the threshold and the drop points (as a rug on the threshold line) drawn on both."""
    plt = pyplot()
    rep = ballot.group_mask(report_groups)[ballot.group]
    err = np.full(len(rep), -1, np.int64) if error_token is None else np.asarray(error_token, np.int64)
    known = rep & (ballot.labels == 0) & (err >= 0)
    fig, axes = plt.subplots(1, 2 if known.any() else 1, figsize=(11.5 if known.any() else 6.4, 4.6), squeeze=False, sharey=True)
    ylabel = "Q-value (cosine to goal)" if signal == "q" else "reward head score"
    n = {}

    def draw(ax, rows, anchor, label, color):
        band = class_band(scores.offsets, scores.positions, sig, rows, ballot.group[rows], anchor, seed=seed)
        ax.plot(band["x"], band["mean"], color=color, lw=1.5, label=f"{label}: mean (n = {band['n_trajectories']})")
        ax.fill_between(band["x"], band["lo"], band["hi"], color=color, alpha=0.2, lw=0)
        drops = rows[~res.kept[rows]]
        x = res.first_drop_position[drops] - (anchor if np.isscalar(anchor) else anchor[~res.kept[rows]])
        ax.plot(x, np.full(len(x), threshold), "|", ms=14, mew=1.2, color=color, alpha=0.6,
                label=f"{label}: drop points ({len(drops)} of {len(rows)} dropped)")

    ax = axes[0, 0]
    for label, lab, color in (("correct", 1, "tab:green"), ("incorrect", 0, "tab:red")):
        rows = np.flatnonzero(rep & (ballot.labels == lab))
        n[label] = len(rows)
        if len(rows):
            draw(ax, rows, 0, label, color)
    ax.axvline(skip_first, color="grey", ls=":", lw=1, label=f"skip_first {skip_first}")
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel(ylabel)
    ax.set_title("from the start of the completion", fontsize=9)
    if known.any():
        ax2 = axes[0, 1]
        rows = np.flatnonzero(known)
        draw(ax2, rows, err[rows], "incorrect, error known", "tab:red")
        ax2.axvline(0, color="black", ls=":", lw=1, label="first wrong token")
        ax2.set_xlabel("tokens from the first wrong token")
        ax2.set_title("incorrect solutions aligned at their first error", fontsize=9)
    for a in axes[0]:
        a.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
        a.plot([], [], " ", label=f"shaded: 95% interval over problems; positions with ≥ {MIN_TRAJECTORIES} trajectories")
        a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
        a.grid(alpha=0.3)
    fig.suptitle(figure_title(f"Per-token {'Q' if signal == 'q' else 'reward'} along report trajectories", **(about or {}),
                              n=f"{n['correct']} correct / {n['incorrect']} incorrect"), fontsize=10, y=1.04)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
