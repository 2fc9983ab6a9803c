"""Figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from probekit.early_stop import FilterResult
    from probekit.scoring import Scores
    from probekit.voting import Ballot


def plot_prefix_curves(
    fractions: Sequence[float],
    curves: Mapping[str, Sequence[float | None]],
    path: str | Path,
    title: str,
    references: Mapping[str, float] | None = None,
) -> Path:
    """AUROC vs share of the completion seen (the paper's prefix figure), PNG written atomically.

    `curves` maps a label to one AUROC per fraction (None = undefined, not drawn);
    `references` are full-completion numbers (e.g. trivial baselines) drawn as
    horizontal lines, so a curve can be read against what needs no probe at all.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probekit.io import atomic_path

    xs = [100 * f for f in fractions]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, ys in curves.items():
        ax.plot(xs, [float("nan") if v is None else v for v in ys], marker="o", label=label)
    styles = iter(["--", ":", "-."] * 3)
    for label, value in (references or {}).items():
        ax.axhline(value, linestyle=next(styles), color="gray", linewidth=1, label=label)
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_xlabel("% of completion seen")
    ax.set_ylabel("AUROC (label 1 vs 0)")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_prefix_auroc(metrics: dict, path: str | Path) -> Path:
    """Prefix AUROC curves of one evaluation (reward head and Q-values), PNG.

    Baselines that read the whole completion (length, logistic) are drawn as
    horizontal reference lines at their full-completion AUROC.
    """
    prefix = metrics["probe"]["prefix"]
    curves = {"probe reward": prefix["reward_auroc"]}
    curves.update({f"probe Q ({k[len('q_auroc_'):]} goal)": prefix[k] for k in prefix if k.startswith("q_auroc_")})
    references = {}
    for name, b in (metrics.get("baselines") or {}).items():
        auroc = (b or {}).get("auroc") or {}
        if name != "random" and auroc.get("value") is not None:
            references[f"{name} (full completion)"] = auroc["value"]
    title = f"Prefix AUROC, {metrics.get('split', '')} split, layer {metrics.get('layer', '')}"
    return plot_prefix_curves(prefix["fractions"], curves, path, title, references)


def _savefig(fig: Any, path: Path) -> None:
    from probekit.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def plot_frontier(path: Path, metrics: dict) -> None:
    """Report-group accuracy vs share of tokens saved: one point per threshold, plus baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    _savefig(fig, path)
    plt.close(fig)


def plot_curves(
    path: Path, scores: Scores, sig: np.ndarray, res: FilterResult, ballot: Ballot, report_groups: Sequence[str],
    threshold: float, skip_first: int, signal: str, seed: int, per_class: int = 4,
) -> None:
    """Signal along a few correct (label 1) and incorrect (label 0) report trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    _savefig(fig, path)
    plt.close(fig)
