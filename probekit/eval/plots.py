"""The evaluation's figures (prefix AUROC), and the two helpers every probekit figure is drawn and saved with.

matplotlib is imported by `pyplot()` when a figure is drawn, not with this
module: it costs ~0.4 s and most commands that import the evaluation never
draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from probekit.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """Write `fig` as a PNG atomically (temporary name, then rename) and close it."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", **savefig)
    pyplot().close(fig)
    return path


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
    plt = pyplot()
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
    return save_figure(fig, path)


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
