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


def figure_title(what: str, *, model: str | None = None, layer=None, lam: float | None = None, n: str | None = None) -> str:
    """A figure's title: what it shows, then the model, layer, λ and n it was measured with (those known), on a second line."""
    about = [str(model) if model else None, None if layer is None else f"layer {layer}", None if lam is None else f"λ = {lam:g}", n]
    about = [a for a in about if a]
    return what + ("\n" + ", ".join(about) if about else "")


def plot_prefix_curves(
    fractions: Sequence[float],
    curves: Mapping[str, Sequence[float | None]],
    path: str | Path,
    title: str,
    references: Mapping[str, float] | None = None,
    bands: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]] | None = None,
) -> Path:
    """AUROC vs share of the completion seen (the paper's prefix figure), PNG written atomically.

    `curves` maps a label to one AUROC per fraction (None = undefined, not drawn);
    `bands` maps some of the labels to (lo, hi) per fraction, shaded around
    their curve (the 95% interval); `references` are full-completion numbers
    (e.g. trivial baselines) drawn as horizontal lines, so a curve can be read
    against what needs no probe at all.
    """
    plt = pyplot()
    xs = [100 * f for f in fractions]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    nan = lambda vs: [float("nan") if v is None else v for v in vs]  # noqa: E731
    for label, ys in curves.items():
        (line,) = ax.plot(xs, nan(ys), marker="o", ms=4, label=label)
        if bands and label in bands:
            lo, hi = bands[label]
            ax.fill_between(xs, nan(lo), nan(hi), color=line.get_color(), alpha=0.18, lw=0)
    styles = iter(["--", ":", "-."] * 3)
    for label, value in (references or {}).items():
        ax.axhline(value, linestyle=next(styles), color="gray", linewidth=1, label=label)
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_xlabel("% of completion seen")
    ax.set_ylabel("AUROC (label 1 vs 0)")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if bands:
        ax.plot([], [], " ", label="shaded: 95% interval, bootstrap over problems")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_prefix_auroc(metrics: dict, path: str | Path, *, model: str | None = None, lam: float | None = None) -> Path:
    """Prefix AUROC curves of one evaluation (reward head and Q-values) with their per-fraction intervals, PNG.

    Baselines that read the whole completion (length, logistic) are drawn as
    horizontal reference lines at their full-completion AUROC. `model` and
    `lam` go into the title (default: the metrics' own "model" and "lam").
    """
    prefix = metrics["probe"]["prefix"]
    names = {"reward_auroc": "probe reward"}
    names.update({k: f"probe Q ({k[len('q_auroc_'):]} goal)" for k in prefix if k.startswith("q_auroc_")})
    curves = {label: prefix[k] for k, label in names.items()}
    intervals = prefix.get("intervals") or {}
    bands = {label: (intervals[k]["lo"], intervals[k]["hi"]) for k, label in names.items() if k in intervals}
    references = {}
    for name, b in (metrics.get("baselines") or {}).items():
        auroc = (b or {}).get("auroc") or {}
        if name != "random" and auroc.get("value") is not None:
            references[f"{name} (full completion)"] = auroc["value"]
    n = f"{metrics.get('split', '')} split: {metrics.get('n_labelled', '?')} trajectories, {metrics.get('n_groups', '?')} problems"
    title = figure_title("Prefix AUROC", model=model or metrics.get("model"), layer=metrics.get("layer"),
                         lam=metrics.get("lam") if lam is None else lam, n=n)
    return plot_prefix_curves(prefix["fractions"], curves, path, title, references, bands)
