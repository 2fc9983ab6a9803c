"""A grid of fits on one store: λ × layer × encoder widths × K × goal kind × seeds × ablation axes.

λ = 0 (pure Bradley-Terry) is always included; its runs ignore K and the
contrastive variant, so they are trained once per (layer, widths, seed) and
reported with K "-". The goal kind (mean goal or k-means prototypes) only
changes the Q-values, so it does not need another training run: each run is
evaluated with every goal kind.

Ablation axes (`SweepConfig.axes`) vary fit options by name: `features`
(single, concat, mix), `pooling`, `contrastive`, `pairs`; an axis not given
keeps the template's value. Runs reading several layers (concat, mix) do not
take the layer axis: they run once, on --feature-layers, with layer "a+b+…".
Every combination of the axes is a run, unless `one_at_a_time`: then only the
template's configuration and each variant that changes one axis from it, the
runs an ablation study compares (4 axes of 2-3 values: 8 variants, not 54).

Outputs in --out: runs/<name>/ (one checkpoint per run), results.csv (one
row per run and goal kind), results.json (options, runs, the mean ± std
summary over seeds, the baselines per layer), summary.png (reward AUROC vs λ
per layer, seeds and trivial baselines drawn).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Callable

import numpy as np

from probekit.config import ABLATION_AXES, FitConfig, SweepConfig, ablation_name, widths_name
from probekit.errors import ProbekitError
from probekit.eval.run_plots import plot_sweep
from probekit.io import atomic_path, write_json
from probekit.outputs import claim_output
from probekit.pipeline import fit_probe
from probekit.probe.checkpoint import load_checkpoint, store_info
from probekit.probe.data import open_rows
from probekit.probe.train import input_layers, prepare
from probekit.progress import Progress, or_null
from probekit.store import Store

METRICS = ("pairwise_acc", "auroc", "auroc_strat", "auroc_resid", "q_auroc", "q_auroc_strat", "q_auroc_resid", "err_token_auroc")
def run_name(run: dict) -> str:
    k = "-" if run["K"] is None else run["K"]
    layer = "-" if run["layer"] is None else run["layer"]
    extra = ablation_name(run)
    return f"lam{run['lam']:g}_L{layer}_w{widths_name(run['widths'])}_K{k}_s{run['seed']}" + ("_" + extra.replace(" ", "_") if extra else "")


def run_sweep(store_path: str | Path, out: str | Path, config: SweepConfig, *, overwrite: bool = False, progress: Progress | None = None,
              on_plan: Callable[[dict], None] | None = None) -> dict:
    """Run the grid; `on_plan` receives `sweep_plan` once --out is claimed, before the first fit (the CLI prints it)."""
    config.validate()
    with claim_output(out, "sweep", ("runs", "results.csv", "results.json", "summary.png"), overwrite=overwrite, inputs=[store_path]) as out_dir:
        return _run_sweep(store_path, out, out_dir, config, overwrite, progress, on_plan)


def sweep_plan(store: Store, config: SweepConfig) -> dict:
    """What a sweep will run, known before its first fit: layers (and where they come from), λ values, seeds, runs.

    The CLI prints it first, because the default layers are every layer of the store and each multiplies the
    fits; the sweep itself runs exactly this grid. Runs already finished in --out are reused, not fitted again.
    """
    layers = list(store.layers) if not config.layers else [int(x) for x in config.layers]
    for layer in layers:
        store.check_layer(layer)
    return {"layers": layers, "layers_from": "--layers" if config.layers else "every layer of the store",
            "lams": sorted(set(float(x) for x in config.lams) | {0.0}), "seeds": list(config.seeds), "runs": config.runs(layers)}


def _run_sweep(store_path, out, out_dir, config: SweepConfig, overwrite: bool, progress: Progress | None,
               on_plan: Callable[[dict], None] | None) -> dict:
    store = Store(store_path)
    plan = sweep_plan(store, config)
    layers, grid = plan["layers"], plan["runs"]
    runs_dir = out_dir.file("runs")
    # Finished runs are read (and a damaged one refused) before the plan is announced, and the plan waits for the first
    # fit's data to be read too, so an error about an input is the first line a user sees.
    finished = {run_name(run): _finished_run(runs_dir / run_name(run), config.fit_config(run), store, config.split) for run in grid}
    announce = on_plan if on_plan is not None else (lambda _plan: None)
    rows: list[dict] = []
    baselines: dict = {}  # (layer, seed) -> baselines dict
    cache: dict = {}
    source = None
    evaluated = None  # the evaluated split's size, for the figure's title
    task = or_null(progress).task("sweep", len(grid), unit="runs")
    try:
        for run in grid:
            t0 = time.time()
            cfg = config.fit_config(run)
            run_out = runs_dir / run_name(run)
            needed = input_layers(store, cfg)
            if run["layer"] is None:
                run = {**run, "layer": "+".join(map(str, needed))}  # a multi-layer run is reported under its layers
            ckpt = finished[run_out.name]
            if ckpt is None:
                if source is None or source.layers != needed:
                    source = open_rows(store, needed, cfg.compute.memory_budget_mb)
                data = prepare(store, cfg, source=source)
                announce(plan)
                announce = lambda _plan: None  # noqa: E731 (once)
                ckpt = fit_probe(store, run_out, cfg, overwrite=overwrite, data=data, eval_split=config.split, baseline_cache=cache)
            m = ckpt.metrics.get(config.split)
            if m is None:
                raise ProbekitError(f"sweep: the '{config.split}' split is empty; use --split with a non-empty split or change the fractions")
            baselines[(run["layer"], run["seed"])] = m.get("baselines", {})
            evaluated = f"{config.split} split: {m.get('n_labelled')} trajectories, {m.get('n_groups')} problems"
            for goal in config.goals:
                rows.append(_row(run, goal, m, ckpt, time.time() - t0))
            task.advance(1, note=f"{run_name(run)}  auroc {_fmt(m['probe']['auroc']['value'])}")
    finally:
        task.close()
    result = {
        "options": {"store": str(store_path), "out": str(out), "lams": sorted(set(config.lams) | {0.0}), "layers": layers,
                    "widths": [widths_name(w) for w in config.widths], "ks": list(config.ks), "goals": list(config.goals),
                    "seeds": list(config.seeds), "prototypes": config.prototypes, "split": config.split,
                    "axes": {name: list(config.axis(name)) for name in ABLATION_AXES}, "one_at_a_time": config.one_at_a_time,
                    "template": config.template.to_dict()},
        "runs": rows,
        "summary": summarise(rows),
        "baselines": summarise_baselines(baselines),
    }
    write_results(out_dir, rows, result, model=store.manifest.get("model", {}).get("name"), n=evaluated)
    return result


def _finished_run(path: Path, cfg: FitConfig, store, split: str):
    """The checkpoint of an identical earlier run (same options, same store, evaluated on `split`), else None.

    This makes an interrupted or extended sweep resume: only missing runs are fit.
    Options are compared as configs, so a run saved before an option existed
    counts as that option's default (which is what it did). A run folder
    without config.json never finished (`save_checkpoint` writes it last) and
    is fit again; one whose checkpoint is damaged or hand-edited (its
    config.json, weights or metrics.json, checked by `load_checkpoint`) is
    refused with one line naming the file: neither fit over unseen nor read
    into the results.
    """
    if not (path / "config.json").exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except ProbekitError as exc:
        raise ProbekitError(f"sweep: run {path.name}: {exc}; remove {path} to fit that run again") from None
    try:
        same = FitConfig.from_dict(ckpt.config.get("fit") or {}) == cfg and ckpt.config.get("store") == store_info(store)
    except ProbekitError:  # options of another probekit version
        return None
    return ckpt if same and split in ckpt.metrics else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _row(run: dict, goal: str, m: dict, ckpt, seconds: float) -> dict:
    probe = m["probe"]
    q = probe.get(f"q_auroc_{goal}", {})
    err = probe.get("error_localisation") or {}
    return {
        "lam": run["lam"], "layer": run["layer"], "widths": widths_name(run["widths"]), "K": run["K"], "goal": goal, "seed": run["seed"],
        **{name: run[name] for name in ABLATION_AXES},
        "pairwise_acc": probe["pairwise_accuracy"]["value"], "pairwise_lo": probe["pairwise_accuracy"]["lo"], "pairwise_hi": probe["pairwise_accuracy"]["hi"],
        "auroc": probe["auroc"]["value"], "auroc_lo": probe["auroc"]["lo"], "auroc_hi": probe["auroc"]["hi"],
        **_length_fields("auroc", probe["auroc"]),
        "q_auroc": q.get("value"), "q_auroc_lo": q.get("lo"), "q_auroc_hi": q.get("hi"),
        **_length_fields("q_auroc", q),
        "err_token_auroc": err.get("token_auroc") if goal == "mean" else None,
        "err_mean_abs": err.get("mean_abs_error") if goal == "mean" else None,
        "beats_baselines": m.get("beats_baselines"), "beats_logistic": m.get("beats_logistic"), "beats_length": m.get("beats_length"),
        "best_epoch": (ckpt.metrics.get("train") or {}).get("best_epoch"), "seconds": round(seconds, 3), "checkpoint": str(ckpt.path),
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
    """Mean ± std over seeds per (λ, layer, widths, K, goal, ablation axes)."""
    keys = ("lam", "layer", "widths", "K", "goal", *ABLATION_AXES)
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
    for (layer, name), bs in sorted(per.items(), key=lambda kv: (isinstance(kv[0][0], str), str(kv[0][0]).zfill(12), kv[0][1])):
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


def write_results(out, rows: list[dict], result: dict, *, model: str | None = None, n: str | None = None) -> None:
    """results.csv, results.json and summary.png (AUROC vs λ per layer; `model` and `n` name it) into the sweep's claimed
    output folder, as one set."""
    cols = list(rows[0].keys()) if rows else []
    with out.commit_set():
        if rows:
            plot_sweep(result, out.file("summary.png"), model=model, n=n)
        else:  # named and not written: an earlier sweep's figure does not stay beside these results
            out.file("summary.png")
        with atomic_path(out.file("results.csv")) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: "" if v is None else v for k, v in r.items()})
        write_json(out.file("results.json"), result)
