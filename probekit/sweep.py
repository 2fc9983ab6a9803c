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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from probekit.errors import ProbekitError

GOAL_KINDS = ("mean", "kmeans")
METRICS = ("pairwise_acc", "auroc", "q_auroc", "err_token_auroc")


@dataclass
class SweepOptions:
    store: Path
    out: Path
    lams: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.5, 1.0])
    layers: list[int] | None = None  # default: every layer of the store
    widths: list[tuple[int, ...]] = field(default_factory=lambda: [(256,)])  # () = linear encoder
    ks: list[int] = field(default_factory=lambda: [8])
    goals: list[str] = field(default_factory=lambda: ["mean"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    prototypes: int = 4
    split: str = "valid"
    base: dict = field(default_factory=dict)  # other FitOptions fields (epochs, lr, rep_size, ...)
    progress: bool = True


def widths_name(widths: tuple[int, ...]) -> str:
    return "x".join(str(w) for w in widths) if widths else "linear"


def parse_widths_list(spec: str) -> list[tuple[int, ...]]:
    """'64,256,128x128,linear' -> [(64,), (256,), (128, 128), ()]."""
    out = []
    for item in spec.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item in ("linear", "0"):
            out.append(())
            continue
        try:
            ws = tuple(int(w) for w in item.split("x"))
        except ValueError:
            raise ProbekitError(f"--widths: '{item}' is not a width list like 256 or 128x128 (or 'linear')") from None
        if any(w < 1 for w in ws):
            raise ProbekitError(f"--widths: widths must be positive, got '{item}'")
        out.append(ws)
    if not out:
        raise ProbekitError("--widths: give at least one encoder (e.g. 256 or 128x128 or linear)")
    return out


def _grid(opts: SweepOptions, layers: list[int]) -> list[dict]:
    lams = sorted(set(float(x) for x in opts.lams) | {0.0})
    runs = []
    for layer, lam, widths, seed in itertools.product(layers, lams, opts.widths, opts.seeds):  # layer outermost: load each once
        for K in ([None] if lam == 0 else opts.ks):
            runs.append({"lam": lam, "layer": int(layer), "widths": tuple(widths), "K": K, "seed": int(seed)})
    return runs


def run_name(run: dict) -> str:
    k = "-" if run["K"] is None else run["K"]
    return f"lam{run['lam']:g}_L{run['layer']}_w{widths_name(run['widths'])}_K{k}_s{run['seed']}"


def run_sweep(opts: SweepOptions, console=None) -> dict:
    from probekit.probe.data import open_rows
    from probekit.probe.train import FitOptions, fit, prepare
    from probekit.store import Store

    for g in opts.goals:
        if g not in GOAL_KINDS:
            raise ProbekitError(f"--goal must be a comma list of {', '.join(GOAL_KINDS)}, got '{g}'")
    if not opts.seeds or not opts.ks or not opts.widths or not opts.goals:
        raise ProbekitError("sweep: --seeds, --k, --widths and --goal each need at least one value")
    if any(k < 1 for k in opts.ks):
        raise ProbekitError("--k values must be at least 1")
    if "kmeans" in opts.goals and opts.prototypes < 2:
        raise ProbekitError("--goal kmeans needs --prototypes of at least 2")
    store = Store(opts.store)
    layers = list(store.layers) if not opts.layers else [int(x) for x in opts.layers]
    for layer in layers:
        store.check_layer(layer)
    grid = _grid(opts, layers)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    baselines: dict = {}  # (layer, seed) -> baselines dict
    cache: dict = {}
    source = None
    progress = _progress(console, len(grid)) if opts.progress else None
    try:
        for run in grid:
            t0 = time.time()
            fo = FitOptions(store=Path(opts.store), out=out / "runs" / run_name(run), **opts.base)
            fo = replace(fo, layer=run["layer"], lam=run["lam"], K=run["K"] or fo.K, seed=run["seed"],
                         encoder="mlp" if run["widths"] else "linear", widths=run["widths"],
                         goal_prototypes=opts.prototypes if "kmeans" in opts.goals else 1, progress=False)
            ckpt = _finished_run(fo, store, opts.split)
            if ckpt is None:
                if source is None or source.layer != run["layer"]:
                    source = open_rows(store, run["layer"], fo.memory_budget_mb)
                data = prepare(fo, store=store, source=source)
                ckpt = fit(fo, data=data, eval_split=opts.split, baseline_cache=cache)
            m = ckpt.metrics.get(opts.split)
            if m is None:
                raise ProbekitError(f"sweep: the '{opts.split}' split is empty; use --split with a non-empty split or change the fractions")
            baselines[(run["layer"], run["seed"])] = m.get("baselines", {})
            for goal in opts.goals:
                rows.append(_row(run, goal, m, ckpt, time.time() - t0))
            if progress:
                progress[0].update(progress[1], advance=1, last=f"{run_name(run)}  auroc {_fmt(m['probe']['auroc']['value'])}")
    finally:
        if progress:
            progress[0].stop()
    summary = summarise(rows)
    base_rows = summarise_baselines(baselines)
    result = {
        "options": {"store": str(opts.store), "out": str(opts.out), "lams": sorted(set(opts.lams) | {0.0}), "layers": layers,
                    "widths": [widths_name(w) for w in opts.widths], "ks": opts.ks, "goals": opts.goals, "seeds": opts.seeds,
                    "prototypes": opts.prototypes, "split": opts.split, **opts.base},
        "runs": rows,
        "summary": summary,
        "baselines": base_rows,
    }
    write_results(out, rows, result)
    return result


def _finished_run(fo, store, split: str):
    """The checkpoint of an identical earlier run (same options, same store, evaluated on `split`), else None.

    This makes an interrupted or extended sweep resume: only missing runs are fit.
    """
    from probekit.probe.checkpoint import load_checkpoint, store_info

    path = Path(fo.out)
    if not (path / "config.json").exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except ProbekitError:
        return None
    want = {**fo.config(), "store": store_info(store)}
    same = all(ckpt.config.get(k) == v for k, v in want.items() if k != "progress")
    return ckpt if same and split in ckpt.metrics else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _progress(console, total):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if console is None:
        from cli.common import console
    p = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[last]}"),
                 console=console, transient=True)
    task = p.add_task("sweep", total=total, last="")
    p.start()
    return p, task


def _row(run: dict, goal: str, m: dict, ckpt, seconds: float) -> dict:
    probe = m["probe"]
    q = probe.get(f"q_auroc_{goal}", {})
    err = probe.get("error_localisation") or {}
    return {
        "lam": run["lam"], "layer": run["layer"], "widths": widths_name(run["widths"]), "K": run["K"], "goal": goal, "seed": run["seed"],
        "pairwise_acc": probe["pairwise_accuracy"]["value"], "pairwise_lo": probe["pairwise_accuracy"]["lo"], "pairwise_hi": probe["pairwise_accuracy"]["hi"],
        "auroc": probe["auroc"]["value"], "auroc_lo": probe["auroc"]["lo"], "auroc_hi": probe["auroc"]["hi"],
        "q_auroc": q.get("value"), "q_auroc_lo": q.get("lo"), "q_auroc_hi": q.get("hi"),
        "err_token_auroc": err.get("token_auroc") if goal == "mean" else None,
        "err_mean_abs": err.get("mean_abs_error") if goal == "mean" else None,
        "beats_baselines": m.get("beats_baselines"), "beats_logistic": m.get("beats_logistic"),
        "best_epoch": ckpt.metrics["train"]["best_epoch"], "seconds": round(seconds, 3), "checkpoint": str(ckpt.path),
    }


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
        flags = [r["beats_baselines"] for r in rs if r["beats_baselines"] is not None]
        item["beats_baselines"] = f"{sum(flags)}/{len(flags)}" if flags else None
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
        dirs = sorted({b.get("direction") for b in bs if b.get("direction")})
        if dirs:
            item["direction"] = ",".join(dirs)
        out.append(item)
    return out


def write_results(out: Path, rows: list[dict], result: dict) -> None:
    from probekit.io import atomic_path, write_json

    cols = list(rows[0].keys()) if rows else []
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    write_json(out / "results.json", result)


def _pm(mean, std) -> str:
    return "-" if mean is None else f"{mean:.3f}±{std:.2f}"


def sweep_table(result: dict):
    """Rich table: one row per configuration (mean ± std over seeds), then the baselines."""
    from cli.common import rich_table

    rows = []
    for s in result["summary"]:
        rows.append([f"{s['lam']:g}", s["layer"], s["widths"], "-" if s["K"] is None else s["K"], s["goal"], s["n_seeds"],
                     _pm(s["pairwise_acc_mean"], s["pairwise_acc_std"]), _pm(s["auroc_mean"], s["auroc_std"]),
                     _pm(s["q_auroc_mean"], s["q_auroc_std"]), _pm(s["err_token_auroc_mean"], s["err_token_auroc_std"]),
                     s["beats_baselines"] or "-"])
    for b in result["baselines"]:
        name = b["baseline"] + (f" ({b['direction']})" if b.get("direction") else "")
        rows.append(["baseline", b["layer"], name, "", "", b["n_seeds"], _pm(b["pairwise_acc_mean"], b["pairwise_acc_std"]),
                     _pm(b["auroc_mean"], b["auroc_std"]), "", "", ""])
    split = result["options"]["split"]
    return rich_table(f"probekit sweep ({split} split, mean ± std over seeds)",
                      ["λ", "layer", "encoder", "K", "goal", "seeds", "pair acc", "AUROC", "Q AUROC", "err AUROC", "beats"], rows)
