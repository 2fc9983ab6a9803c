"""A grid of fits on one store: λ × layer × encoder widths × K × goal kind × seeds.

λ = 0 (pure Bradley-Terry) is always included; its runs ignore K, so they are
trained once per (layer, widths, seed) and reported with K "-". The goal kind
(mean goal or k-means prototypes) only changes the Q-values, so it does not
need another training run: each run is evaluated with every goal kind.

Outputs in --out: runs/<name>/ (one checkpoint per run), results.csv (one
row per run and goal kind), results.json (options, runs, the mean ± std
summary over seeds, the baselines per layer).
"""

from __future__ import annotations

import csv
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probekit.config import FitConfig, parse_widths_list, show_widths
from probekit.errors import ProbekitError
from probekit.goals import GOAL_KINDS
from probekit.progress import Progress, or_null

METRICS = ("pairwise_acc", "auroc", "auroc_strat", "auroc_resid", "q_auroc", "q_auroc_strat", "q_auroc_resid", "err_token_auroc")


@dataclass(frozen=True)
class SweepConfig:
    """A template fit and the axes varied around it (every combination is one run)."""

    template: FitConfig = field(default_factory=FitConfig)
    lams: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    layers: tuple[int, ...] | None = None  # default: every layer of the store
    widths: tuple[tuple[int, ...], ...] = ((256,),)  # () = linear encoder
    ks: tuple[int, ...] = (8,)
    goals: tuple[str, ...] = ("mean",)
    seeds: tuple[int, ...] = (0, 1, 2)
    prototypes: int = 4
    split: str = "valid"

    def validate(self) -> SweepConfig:
        for g in self.goals:
            if g not in GOAL_KINDS:
                raise ProbekitError(f"--goal must be a comma list of {', '.join(GOAL_KINDS)}, got '{g}'")
        if not self.seeds or not self.ks or not self.widths or not self.goals or not self.lams:
            raise ProbekitError("sweep: --lam, --seeds, --k, --widths and --goal each need at least one value")
        if "kmeans" in self.goals and self.prototypes < 2:
            raise ProbekitError("--goal kmeans needs --prototypes of at least 2")
        if self.split not in ("train", "valid", "test", "all"):
            raise ProbekitError(f"--split must be train, valid, test or all, got '{self.split}'")
        for run in self.runs([0]):  # every axis value through the one fit validation
            self.fit_config(run).validate()
        return self

    def runs(self, layers: list[int]) -> list[dict]:
        """λ = 0 is always included and ignores K (one run per layer, widths and seed)."""
        lams = sorted(set(float(x) for x in self.lams) | {0.0})
        out = []
        for layer, lam, widths, seed in itertools.product(layers, lams, self.widths, self.seeds):  # layer outermost: load each once
            for K in ([None] if lam == 0 else self.ks):
                out.append({"lam": lam, "layer": int(layer), "widths": tuple(widths), "K": K, "seed": int(seed)})
        return out

    def fit_config(self, run: dict) -> FitConfig:
        cfg = self.template.vary(lam=run["lam"], layer=run["layer"], widths=run["widths"], seed=run["seed"],
                                 goal_prototypes=self.prototypes if "kmeans" in self.goals else 1)
        return cfg.vary(K=run["K"]) if run["K"] is not None else cfg


def widths_name(widths: tuple[int, ...]) -> str:
    return show_widths(widths)


def run_name(run: dict) -> str:
    k = "-" if run["K"] is None else run["K"]
    return f"lam{run['lam']:g}_L{run['layer']}_w{widths_name(run['widths'])}_K{k}_s{run['seed']}"


def run_sweep(store_path: str | Path, out: str | Path, config: SweepConfig, *, overwrite: bool = False, progress: Progress | None = None) -> dict:
    from probekit.outputs import claim_output
    from probekit.pipeline import fit_probe
    from probekit.probe.data import open_rows
    from probekit.probe.train import prepare
    from probekit.store import Store

    config.validate()
    out_dir = claim_output(out, "sweep", ("runs", "results.csv", "results.json"), overwrite=overwrite, inputs=[store_path])
    store = Store(store_path)
    layers = list(store.layers) if not config.layers else [int(x) for x in config.layers]
    for layer in layers:
        store.check_layer(layer)
    grid = config.runs(layers)
    runs_dir = out_dir.file("runs")
    rows: list[dict] = []
    baselines: dict = {}  # (layer, seed) -> baselines dict
    cache: dict = {}
    source = None
    task = or_null(progress).task("sweep", len(grid), unit="runs")
    try:
        for run in grid:
            t0 = time.time()
            cfg = config.fit_config(run)
            run_out = runs_dir / run_name(run)
            ckpt = _finished_run(run_out, cfg, store, config.split)
            if ckpt is None:
                if source is None or source.layer != run["layer"]:
                    source = open_rows(store, run["layer"], cfg.compute.memory_budget_mb)
                ckpt = fit_probe(store, run_out, cfg, overwrite=overwrite, data=prepare(store, cfg, source=source),
                                 eval_split=config.split, baseline_cache=cache)
            m = ckpt.metrics.get(config.split)
            if m is None:
                raise ProbekitError(f"sweep: the '{config.split}' split is empty; use --split with a non-empty split or change the fractions")
            baselines[(run["layer"], run["seed"])] = m.get("baselines", {})
            for goal in config.goals:
                rows.append(_row(run, goal, m, ckpt, time.time() - t0))
            task.advance(1, note=f"{run_name(run)}  auroc {_fmt(m['probe']['auroc']['value'])}")
    finally:
        task.close()
    result = {
        "options": {"store": str(store_path), "out": str(out), "lams": sorted(set(config.lams) | {0.0}), "layers": layers,
                    "widths": [widths_name(w) for w in config.widths], "ks": list(config.ks), "goals": list(config.goals),
                    "seeds": list(config.seeds), "prototypes": config.prototypes, "split": config.split,
                    "template": config.template.to_dict()},
        "runs": rows,
        "summary": summarise(rows),
        "baselines": summarise_baselines(baselines),
    }
    write_results(out_dir, rows, result)
    return result


def _finished_run(path: Path, cfg: FitConfig, store, split: str):
    """The checkpoint of an identical earlier run (same options, same store, evaluated on `split`), else None.

    This makes an interrupted or extended sweep resume: only missing runs are fit.
    """
    from probekit.probe.checkpoint import load_checkpoint, store_info

    if not (path / "config.json").exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except ProbekitError:
        return None
    same = ckpt.config.get("fit") == cfg.to_dict() and ckpt.config.get("store") == store_info(store)
    return ckpt if same and split in ckpt.metrics else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _row(run: dict, goal: str, m: dict, ckpt, seconds: float) -> dict:
    probe = m["probe"]
    q = probe.get(f"q_auroc_{goal}", {})
    err = probe.get("error_localisation") or {}
    return {
        "lam": run["lam"], "layer": run["layer"], "widths": widths_name(run["widths"]), "K": run["K"], "goal": goal, "seed": run["seed"],
        "pairwise_acc": probe["pairwise_accuracy"]["value"], "pairwise_lo": probe["pairwise_accuracy"]["lo"], "pairwise_hi": probe["pairwise_accuracy"]["hi"],
        "auroc": probe["auroc"]["value"], "auroc_lo": probe["auroc"]["lo"], "auroc_hi": probe["auroc"]["hi"],
        **_length_fields("auroc", probe["auroc"]),
        "q_auroc": q.get("value"), "q_auroc_lo": q.get("lo"), "q_auroc_hi": q.get("hi"),
        **_length_fields("q_auroc", q),
        "err_token_auroc": err.get("token_auroc") if goal == "mean" else None,
        "err_mean_abs": err.get("mean_abs_error") if goal == "mean" else None,
        "beats_baselines": m.get("beats_baselines"), "beats_logistic": m.get("beats_logistic"), "beats_length": m.get("beats_length"),
        "best_epoch": ckpt.metrics["train"]["best_epoch"], "seconds": round(seconds, 3), "checkpoint": str(ckpt.path),
    }


def _length_fields(prefix: str, auroc: dict) -> dict:
    """{prefix}_strat / _resid (value, lo, hi) and {prefix}_beats_length from an AUROC's length controls (None when absent)."""
    lc = auroc.get("length_controlled") or {}
    out = {}
    for key, name in (("strat", "stratified"), ("resid", "residualised")):
        m = lc.get(name) or {}
        out.update({f"{prefix}_{key}": m.get("value"), f"{prefix}_{key}_lo": m.get("lo"), f"{prefix}_{key}_hi": m.get("hi")})
    if prefix != "auroc":  # the reward's verdict is the run's `beats_length`
        out[f"{prefix}_beats_length"] = lc.get("beats_length")
    return out


def _count(flags) -> str | None:
    """'k/n' of the True among the defined flags."""
    flags = [f for f in flags if f is not None]
    return f"{sum(flags)}/{len(flags)}" if flags else None


def _mean_std(values) -> tuple[float | None, float | None]:
    vals = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(vals) == 0:
        return None, None
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (λ, layer, widths, K, goal)."""
    keys = ("lam", "layer", "widths", "K", "goal")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        item = dict(zip(keys, key))
        item["n_seeds"] = len(rs)
        for metric in METRICS:
            item[f"{metric}_mean"], item[f"{metric}_std"] = _mean_std(r[metric] for r in rs)
        item["beats_baselines"] = _count(r["beats_baselines"] for r in rs)
        item["beats_length"] = _count(r["beats_length"] for r in rs)
        out.append(item)
    return out


def summarise_baselines(baselines: dict) -> list[dict]:
    """Mean ± std over seeds of each baseline, per layer."""
    per: dict[tuple, list[dict]] = {}
    for (layer, _seed), bs in baselines.items():
        for name, b in (bs or {}).items():
            per.setdefault((layer, name), []).append(b or {})
    out = []
    for (layer, name), bs in sorted(per.items()):
        item = {"layer": layer, "baseline": name, "n_seeds": len(bs)}
        item["pairwise_acc_mean"], item["pairwise_acc_std"] = _mean_std((b.get("pairwise_accuracy") or {}).get("value") for b in bs)
        item["auroc_mean"], item["auroc_std"] = _mean_std((b.get("auroc") or {}).get("value") for b in bs)
        lcs = [_length_fields("auroc", b.get("auroc") or {}) for b in bs]
        for key in ("auroc_strat", "auroc_resid"):
            item[f"{key}_mean"], item[f"{key}_std"] = _mean_std(lc[key] for lc in lcs)
        dirs = sorted({b.get("direction") for b in bs if b.get("direction")})
        if dirs:
            item["direction"] = ",".join(dirs)
        out.append(item)
    return out


def write_results(out, rows: list[dict], result: dict) -> None:
    """results.csv and results.json into the sweep's claimed output folder."""
    from probekit.io import atomic_path, write_json

    cols = list(rows[0].keys()) if rows else []
    with atomic_path(out.file("results.csv")) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    write_json(out.file("results.json"), result)
