"""Figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_prefix_auroc(metrics: dict, path: str | Path) -> Path:
    """Prefix AUROC curves (reward head and Q-values vs fraction of the completion seen), PNG.

    Baselines that read the whole completion (length, logistic) are drawn as
    horizontal reference lines at their full-completion AUROC.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probekit.io import atomic_path

    prefix = metrics["probe"]["prefix"]
    xs = [100 * f for f in prefix["fractions"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    curves = [("reward_auroc", "probe reward")] + [(k, f"probe Q ({k[len('q_auroc_'):]} goal)") for k in prefix if k.startswith("q_auroc_")]
    for key, label in curves:
        ys = [float("nan") if v is None else v for v in prefix[key]]
        ax.plot(xs, ys, marker="o", label=label)
    styles = iter(["--", ":", "-."] * 3)
    for name, b in (metrics.get("baselines") or {}).items():
        auroc = (b or {}).get("auroc") or {}
        if name != "random" and auroc.get("value") is not None:
            ax.axhline(auroc["value"], linestyle=next(styles), color="gray", linewidth=1, label=f"{name} (full completion)")
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_xlabel("% of completion seen")
    ax.set_ylabel("AUROC (label 1 vs 0)")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(f"Prefix AUROC, {metrics.get('split', '')} split, layer {metrics.get('layer', '')}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
