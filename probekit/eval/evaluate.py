"""Evaluation of a probe on held-out groups, with group-bootstrap confidence intervals.

Metrics (all written to metrics.json):

- pairwise accuracy: fraction of held-out pairs with r(chosen) > r(rejected) (ties 1/2);
- AUROC of the last-token reward for label 1 vs label 0 trajectories, with a
  95% interval from a bootstrap that resamples GROUPS (prompts), not
  trajectories, since answers to one prompt are correlated;
- Q AUROC: the same for the Q-value (cosine of φ(last state) to the goal);
- prefix AUROC at 10%, 20%, …, 100% of each completion, for the reward head and
  for Q, each read on the stored state nearest at or below token ceil(f·T) − 1;
- error localisation (synthetic data with `error_token` >= 0): on incorrect
  trajectories, the AUROC of token Q-values before vs at/after the error, and
  the mean |first token whose Q drops below a threshold − error_token|;
- length-controlled AUROC beside each AUROC of the reward and of Q
  (`length_controlled`: within length strata and after regressing out
  log length, see `probekit.eval.length_control`), and `beats_length`: whether the
  reward still ranks correctly once length is held fixed;
- baselines on the same split and the same bootstrap resamples (see
  `probekit.eval.baselines`), fitted where the probe was fitted, and
  `beats_baselines`: whether the probe's interval clears the best trivial baseline.

Per-token rewards and Q-values come from the one scorer (`probekit.probe.scoring`),
the same numbers `probekit filter` reads. They are read a block of the row
source at a time and reduced to per-trajectory summaries (`SplitScores`), and
the baselines keep per-trajectory states, so an evaluation's memory is one
block plus O(trajectories), whatever the store's rows (the one exception:
error localisation keeps the per-token Q of incorrect trajectories whose first
wrong token is known, which only synthetic data has).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from probekit.config import EvalConfig
from probekit.eval.baselines import beats, run_baselines
from probekit.eval.context import EvalContext, make_context
from probekit.eval.plots import plot_prefix_auroc
from probekit.io import write_json
from probekit.metrics import auroc_ci, point_auroc
from probekit.probe.checkpoint import check_compatible, training_store
from probekit.probe.data import ceil_frac_position, open_rows
from probekit.probe.scoring import Scorer, Scores, iter_trajectory_scores
from probekit.progress import Progress

FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def prefix_rows(scores: Scores, completion_tokens: np.ndarray, frac: float) -> np.ndarray:
    """Per evaluated trajectory, the row (into `scores`) at or below token ceil(frac·T)−1; −1 if none is stored."""
    n = len(scores.traj)
    lengths = np.diff(scores.offsets)
    target = ceil_frac_position(frac, completion_tokens[scores.traj])
    big = int(max(scores.positions.max(initial=0), target.max(initial=0))) + 2
    keys = np.repeat(np.arange(n, dtype=np.int64), lengths) * big + scores.positions
    idx = np.searchsorted(keys, np.arange(n, dtype=np.int64) * big + target, side="right") - 1
    return np.where(idx >= scores.offsets[:-1], idx, -1)


def known_error(meta, traj: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Which of the trajectories `traj` are incorrect with a known first wrong token (`error_token` in [0, T))."""
    err, T = meta.error_token[traj].astype(np.int64), meta.completion_tokens[traj].astype(np.int64)
    return (labels == 0) & (err >= 0) & (err < T)


@dataclass
class SplitScores:
    """What an evaluation keeps of the per-token scores of its trajectories, gathered one block at a time.

    Per trajectory (in the order of `traj`): the last value and the value at each prefix of `FRACTIONS`
    (NaN where no state is stored at or below it) of every signal ("reward" and each goal kind). Per token,
    only the scores of the incorrect trajectories with a known first error (`errors`; synthetic data), which
    the token-level error localisation needs. Nothing else grows with the split's rows.
    """

    traj: np.ndarray
    last: dict[str, np.ndarray]  # signal -> float64 [n]
    prefix: dict[str, np.ndarray]  # signal -> float64 [len(FRACTIONS), n]
    errors: Scores

    @classmethod
    def gather(cls, parts: Iterable[Scores], traj: np.ndarray, meta, labels: np.ndarray, kinds: Sequence[str]) -> SplitScores:
        """Summaries of the blocks `parts` (`probekit.probe.scoring.iter_scores`), which must cover the increasing
        trajectories `traj` once each, in order; `labels`: per store trajectory. The outputs are allocated
        once, so the blocks cost nothing that stays (their number grows with the rows)."""
        signals = ["reward", *kinds]
        last = {k: np.full(len(traj), np.nan) for k in signals}
        prefix = {k: np.full((len(FRACTIONS), len(traj)), np.nan) for k in signals}
        errors: list[Scores] = []
        at = 0
        for part in parts:
            span = slice(at, at + len(part.traj))
            if not np.array_equal(part.traj, traj[span]):
                raise RuntimeError("scorer returned trajectories in another order than the evaluation context")
            rows = np.stack([prefix_rows(part, meta.completion_tokens, f) for f in FRACTIONS])
            has = rows >= 0
            for k in signals:
                values = part.reward if k == "reward" else part.q[k]
                last[k][span] = part.last(values)
                prefix[k][:, span][has] = values[rows[has]]
            wrong = known_error(meta, part.traj, labels[part.traj])
            if wrong.any():
                errors.append(part.select(wrong))
            at = span.stop
        if at != len(traj):
            raise RuntimeError("scorer returned fewer trajectories than the evaluation context")
        return cls(traj, last, prefix, Scores.concat(errors, kinds))


# ---- the evaluation ------------------------------------------------------------------
def evaluate(
    scorer: Scorer,
    ctx: EvalContext,
    source,
    *,
    layer: int,
    baselines: bool = True,
    q_threshold: float | None = None,
    fit_source=None,
    baseline_cache: dict | None = None,
    progress: Progress | None = None,
) -> dict:
    """Metrics of a probe on the trajectories of `ctx`, read through the row source `source`.

    `fit_source` reads the store the probe was fitted on (default: `source`,
    when that is the same store); the baselines are fitted there.
    """
    store, meta = ctx.store, ctx.store.meta
    label_of = np.full(len(store), -1, np.int64)
    label_of[ctx.traj] = ctx.labels
    scores = SplitScores.gather(iter_trajectory_scores(source, scorer, ctx.traj, progress), ctx.traj, meta, label_of, scorer.kinds)

    def per_traj(values_at_eval: np.ndarray) -> np.ndarray:
        full = np.full(len(store), np.nan)
        full[ctx.traj] = values_at_eval
        return full

    train = train_scores(scorer, ctx, source if fit_source is None else fit_source)
    probe = ctx.summary(per_traj(scores.last["reward"]), train("reward"))
    labels = ctx.labels
    lab = labels >= 0
    for kind in scorer.kinds:
        probe[f"q_auroc_{kind}"] = ctx.auroc(per_traj(scores.last[kind]), train(kind))
    probe["prefix"] = prefix_aurocs(scores, ctx, scorer.kinds)
    if "mean" in scores.last and q_threshold is None:
        q_threshold = midpoint_threshold(scores.last["mean"], labels)
    probe["error_localisation"] = error_localisation(scores.errors, meta, label_of[scores.errors.traj], q_threshold)
    metrics = {
        "split": ctx.which,
        "store": str(store.path),
        "layer": int(layer),
        "layers": list(source.layers),
        "n_trajectories": int(len(ctx.traj)),
        "n_labelled": int(lab.sum()),
        "n_groups": int(ctx.counts.shape[1]),
        "n_pairs": int(len(ctx.pairs)),
        "n_boot": int(len(ctx.counts)),
        "probe": probe,
        "length_control": ctx.length.describe(),
        "beats_length": probe["auroc"]["length_controlled"].get("beats_length"),
    }
    if baselines:
        key = (str(store.path), ctx.which, tuple(source.layers), tuple(sorted(ctx.split.get("train", []))), len(ctx.counts), ctx.seed,
               ctx.length_bins)
        if baseline_cache is not None and key in baseline_cache:
            metrics["baselines"] = baseline_cache[key]
        else:
            metrics["baselines"] = run_baselines(ctx, source, source if fit_source is None else fit_source)
            if baseline_cache is not None:
                baseline_cache[key] = metrics["baselines"]
        metrics.update(beats(probe, metrics["baselines"]))
    return metrics


def prefix_aurocs(scores: SplitScores, ctx: EvalContext, kinds: Sequence[str]) -> dict:
    """AUROC of each signal at each prefix of `FRACTIONS`, with its group-bootstrap interval (the evaluation's resamples).

    "reward_auroc" / "q_auroc_KIND" hold one value per fraction (None where a
    class is missing); "intervals" holds, per signal, the 95% "lo" and "hi" of
    each fraction over the same problem resamples as every other interval, so
    neighbouring points of a small test split can be read against their noise.
    """
    labels = ctx.labels
    lab = labels >= 0
    names = (("reward", "reward_auroc"), *((k, f"q_auroc_{k}") for k in kinds))
    prefix: dict = {"fractions": list(FRACTIONS), **{name: [] for _k, name in names}, "intervals": {name: {"lo": [], "hi": []} for _k, name in names}}
    for i in range(len(FRACTIONS)):
        ok = lab & ~np.isnan(scores.prefix["reward"][i])
        for k, name in names:
            res = auroc_ci(scores.prefix[k][i][ok], labels[ok], ctx.group_ids[ok], ctx.counts)
            prefix[name].append(res["value"])
            prefix["intervals"][name]["lo"].append(res["lo"])
            prefix["intervals"][name]["hi"].append(res["hi"])
    return prefix


def train_scores(scorer: Scorer, ctx: EvalContext, fit_source, batch_rows: int = 2048) -> Callable[[str], np.ndarray]:
    """signal ("reward" or a goal kind) -> its last-token value per trajectory of the training store, set on the
    trajectories the length controls are fitted on (`ctx.length.train_traj`), NaN elsewhere.

    Only the last stored state of each trajectory is read and scored, `batch_rows` at a time, so the batches
    (and so the float rounding) do not depend on how the row source splits the store into blocks, and memory
    is one batch. A pooled probe's reward needs every state of the trajectory, so it is scored through the
    one scorer on whole trajectories, a block at a time, keeping each trajectory's last values.
    """
    lc = ctx.length
    n = 0 if ctx.fit_store is None else len(ctx.fit_store)
    values: dict[str, np.ndarray] = {}
    if lc.note is None:
        if scorer.pooled:
            lasts = [{"reward": p.last(p.reward), **{k: p.last(p.q[k]) for k in scorer.kinds}}  # a block's rows at a time
                     for p in iter_trajectory_scores(fit_source, scorer, lc.train_traj)]
            values.update({k: np.concatenate([x[k] for x in lasts]) for k in ("reward", *scorer.kinds)})
        else:
            last = ctx.fit_store.last_rows()[lc.train_traj]
            parts = [scorer(fit_source.rows(last[i:i + batch_rows])) for i in range(0, len(last), batch_rows)]
            values["reward"] = np.concatenate([r for r, _q in parts])
            values.update({k: np.concatenate([q[k] for _r, q in parts]) for k in scorer.kinds})

    def per_fit_traj(signal: str) -> np.ndarray:
        full = np.full(n, np.nan)
        if values:
            full[lc.train_traj] = values[signal]
        return full

    return per_fit_traj


def evaluate_checkpoint(ckpt, store, which: str = "valid", *, n_boot: int = 1000, seed: int = 0, baselines: bool = True,
                        q_threshold: float | None = None, length_bins: int = EvalConfig.length_bins, memory_budget_mb: float = 2048,
                        progress: Progress | None = None) -> dict:
    """Evaluate a loaded checkpoint on a store (its training store or another compatible one).

    Baselines are fitted on the checkpoint's training store and split, then
    applied to `store`; when that store is gone, the fitted baselines say so.
    """
    check_compatible(ckpt, store)
    ctx = make_context(store, ckpt.split, which, n_boot=n_boot, seed=seed, length_bins=length_bins)
    trained_on = ckpt.config["store"]
    same = Path(store.path).resolve() == Path(trained_on["path"]) and store.cache_key == trained_on.get("cache_key")
    fit_store = store if same else training_store(ckpt)  # None when the training store is gone or was re-extracted
    source = open_rows(store, ckpt.layers, memory_budget_mb)
    fit_source = None
    if fit_store is None:
        ctx = dataclasses.replace(ctx, fit_store=None)
    elif fit_store is not store:
        ctx = dataclasses.replace(ctx, fit_store=fit_store)
        fit_source = open_rows(fit_store, ckpt.layers, memory_budget_mb)
    metrics = evaluate(Scorer.from_checkpoint(ckpt), ctx, source, layer=ckpt.layer, baselines=baselines, q_threshold=q_threshold,
                       fit_source=fit_source, progress=progress)
    metrics["checkpoint"] = str(ckpt.path)
    metrics["model"], metrics["lam"] = ckpt.about["model"], ckpt.about["lam"]  # named in the figure's title
    metrics["baselines_fitted_on"] = None if fit_store is None else str(fit_store.path)
    return metrics


def default_eval_out(ckpt: str | Path, split: str) -> Path:
    """`probekit eval`'s folder when no --out is given: CKPT-eval-SPLIT beside the checkpoint.

    Not inside it: a checkpoint folder is what `fit` wrote and what is shared
    (copied, uploaded), and evaluation output there would travel with it.
    The checkpoint's own name is read from its resolved path, so `--ckpt .`
    gives a sibling folder too, not one inside the checkpoint.
    """
    resolved = Path(ckpt).resolve()
    return resolved.parent / f"{resolved.name}-eval-{split}"


def write_evaluation(metrics: dict, out) -> None:
    """metrics.json and prefix_auroc.png into a claimed output folder (`probekit.outputs.OutputDir`), as one set."""
    with out.commit_set(last=("metrics.json",)):
        plot_prefix_auroc(metrics, out.file("prefix_auroc.png"))
        metrics["plot"] = "prefix_auroc.png"
        write_json(out.file("metrics.json"), metrics)


def midpoint_threshold(last_q: np.ndarray, labels: np.ndarray) -> float:
    """The midpoint of the mean last-token Q of label 1 and of label 0 trajectories (0 when a class is missing)."""
    pos, neg = last_q[labels == 1], last_q[labels == 0]
    return float((pos.mean() + neg.mean()) / 2) if len(pos) and len(neg) else 0.0


def error_localisation(scores: Scores, meta, labels: np.ndarray, q_threshold: float | None = None, kind: str = "mean") -> dict | None:
    """Where Q drops on incorrect trajectories whose first wrong token is known (`error_token` >= 0).

    token_auroc: AUROC of per-token Q with tokens before the error as positives
    and tokens at/after it as negatives (1 = Q cleanly separates them).
    threshold: `q_threshold`, or `midpoint_threshold` of the trajectories of
    `scores` (an evaluation passes the one of all its trajectories, and scores
    of just the incorrect ones). mean_abs_error: over trajectories whose Q ever
    falls below the threshold, the mean |position of the first such token −
    error_token|; detected_frac: the fraction that do.
    """
    if kind not in scores.q:
        return None
    q = scores.q[kind]
    err = meta.error_token[scores.traj].astype(np.int64)
    sel = known_error(meta, scores.traj, labels)
    if not sel.any():
        return None
    lengths = np.diff(scores.offsets)
    row_traj = np.repeat(np.arange(len(scores.traj)), lengths)
    rows = np.flatnonzero(sel[row_traj])
    before = scores.positions[rows] < err[row_traj[rows]]
    token_auroc = point_auroc(q[rows], before)
    if q_threshold is None:
        q_threshold = midpoint_threshold(scores.last(q), labels)
    big = np.iinfo(np.int64).max
    idx = np.where(q < q_threshold, np.arange(len(q)), big)
    first = np.minimum.reduceat(idx, scores.offsets[:-1]) if len(q) else np.zeros(0, np.int64)
    detected = sel & (first < big)
    abs_err = np.abs(scores.positions[np.where(detected, first, 0)] - err)[detected]
    return {
        "n_trajectories": int(sel.sum()),
        "n_tokens": int(len(rows)),
        "token_auroc": token_auroc,
        "threshold": float(q_threshold),
        "detected_frac": float(detected.sum() / sel.sum()),
        "mean_abs_error": float(abs_err.mean()) if len(abs_err) else None,
    }
