"""`make bench-scale`: cost curves of fit, sweep, filter scoring and evaluation against store size.

Stores of about 1e5, 1e6 and 1e7 rows of one 576-wide layer (SmolLM2's width,
layer 15) are written with synthetic states *through the real store writer*
(benchmarks/planted.py: `probekit.store.write_shard`, `probekit.extract.manifest.build_manifest` /
`finalize`, `write_pairs`: the same calls `probekit extract` makes); running the
model to extract 1e7 tokens would take days on this machine. The states carry a
planted signal, so fitting is meaningful: every row is a random noise row plus
+a·u (u a fixed unit direction) on correct trajectories, and on incorrect ones
+a·u before a random error token and −a·u from it on. Trajectories come in groups
of 4 (2 correct, 2 incorrect: 4 pairs per group), ~200 rows each, 512 per shard.

Each measurement runs alone in a fresh child process (this script with
--_child) whose peak resident memory (VmHWM of /proc/self/status) is recorded:

* fit       one `fit_probe` (λ = 0.5), seconds per epoch from the progress callback;
* sweep     `run_sweep`, 6 λ × 3 seeds = 18 fits (fewer epochs where --sweep-epochs says);
* score     `probekit.probe.scoring.score_store` over the whole store + `apply_threshold`;
* eval      `probekit.eval.evaluate.evaluate_checkpoint` on the validation split, with baselines.

Results: benchmarks/results/scale.json (command, date, machine, every number and
the fitted log-log slopes) and scale.png (time and memory against rows, log-log).

    .venv/bin/python benchmarks/run_scale.py --sizes 1e5,1e6,1e7 --work /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Clock, PeakMemory, machine, results_header, run_child as run_script_child  # noqa: E402
from benchmarks.planted import HIDDEN, LAYER, POOL_ROWS, SHARD_SIZE, SIGNAL, fit_config, write_planted_store  # noqa: E402

SWEEP_LAMS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
SWEEP_SEEDS = (0, 1, 2)
STEPS = ("fit", "sweep", "score", "eval")
TIME_SLOPE_TARGET = 1.1
SCORE_TARGET_S = 120.0
MACHINE_FIELDS = ("cpu", "cpu_count", "cpus_available", "bf16_instructions", "torch", "torch_threads", "python")
MACHINE_AFTER = ("ram_gb", "load_average_at_start=load_average", "gpu")


def parse_sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


# ---- measurements, one per child process -------------------------------------------------


class EpochClock:
    """A `probekit.progress.Progress` that timestamps the fit's batches, to read seconds per epoch."""

    def __init__(self):
        self.stamps: list[tuple[float, float]] = []  # (seconds since start, batches done)
        self.total = 0.0
        self.started = Clock().start()

    def task(self, description, total, unit=""):
        clock = self
        if description == "fit":
            clock.total, clock.stamps, done = total or 0.0, [], [0.0]

            class _Task:
                def advance(self, n=1, note=""):
                    done[0] += n
                    clock.stamps.append((clock.started.elapsed, done[0]))

                def close(self):
                    pass

            return _Task()
        from probekit.progress import NullProgress

        return NullProgress().task(description, total, unit)

    def epoch_seconds(self, epochs_run: int) -> list[float]:
        """Wall time of each epoch: from the end of the previous epoch's last batch (or the first batch) to its last."""
        if not self.stamps or epochs_run < 1:
            return []
        per = len(self.stamps) / epochs_run  # batches per epoch
        ends = [self.stamps[int(round(per * k)) - 1][0] for k in range(1, epochs_run + 1)]
        return [round(b - a, 3) for a, b in zip([self.stamps[0][0]] + ends[:-1], ends)]


def child_main(args) -> None:
    """One measurement alone in this process; prints its result as one JSON line."""
    from probekit.store import Store

    store_path, work = Path(args._store), Path(args._work)
    # Libraries are imported before the clock starts: the timings are the work, not Python's start-up.
    from probekit.filter.early_stop import apply_threshold, min_signal
    from probekit.eval.evaluate import evaluate_checkpoint
    from probekit.pipeline import fit_probe
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.probe.scoring import Scorer, score_store
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep

    memory = PeakMemory()
    timer = Clock().start()
    out: dict = {}
    if args._child == "fit":
        clock = EpochClock()
        ckpt = fit_probe(Store(store_path), work / "fit", fit_config(args, args.fit_epochs, lam=0.5, n_boot=args.n_boot),
                         overwrite=True, progress=clock)
        tr = ckpt.metrics["train"]
        epochs = clock.epoch_seconds(tr["epochs_run"])
        out = {"epochs_run": tr["epochs_run"], "epoch_seconds": epochs, "seconds_per_epoch": round(float(np.median(epochs)), 3),
               "train_seconds": tr["train_seconds"], "row_source": tr["row_source"], "n_train_pairs": tr["n_train_pairs"],
               "n_valid_pairs": tr["n_valid_pairs"], "valid_auroc": ckpt.metrics["valid"]["probe"]["auroc"]["value"],
               "valid_pairwise_accuracy": ckpt.metrics["valid"]["probe"]["pairwise_accuracy"]["value"]}
    elif args._child == "sweep":
        cfg = SweepConfig(template=fit_config(args, args.sweep_epochs, n_boot=args.n_boot), lams=SWEEP_LAMS, layers=(LAYER,),
                          seeds=SWEEP_SEEDS)
        res = run_sweep(store_path, work / "sweep", cfg, overwrite=True)
        out = {"n_fits": len(res["runs"]), "epochs_per_fit": args.sweep_epochs}
    elif args._child == "score":
        ckpt = load_checkpoint(work / "fit")
        ckpt.model.to(args.device)
        store = Store(store_path)
        scores = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), LAYER)
        mins = min_signal(scores.offsets, scores.positions, scores.q["mean"], 5)
        res = apply_threshold(scores.offsets, scores.positions, scores.q["mean"], store.meta.completion_tokens,
                              float(np.median(mins)), 5)
        out = {"n_rows_scored": int(len(scores.q["mean"])), "score_store_seconds": round(scores.seconds, 3),
               "threshold": "median of the per-trajectory minimum Q (skip_first 5)", "dropped_share": float(res.dropped.mean())}
    elif args._child == "eval":
        ckpt = load_checkpoint(work / "fit")
        ckpt.model.to(args.device)
        m = evaluate_checkpoint(ckpt, Store(store_path), "valid", n_boot=args.n_boot,
                                memory_budget_mb=args.memory_budget_mb)
        out = {"n_trajectories": m["n_trajectories"], "auroc": m["probe"]["auroc"]["value"],
               "q_auroc": m["probe"]["q_auroc_mean"]["value"]}
    seconds = timer.elapsed
    print(json.dumps({"step": args._child, "seconds": round(seconds, 3), "peak_rss_mb": round(memory.peak_mb(), 1),
                      "rss_before_mb": round(memory.before_mb, 1), **out}))


def run_child(args, step: str, store: Path, work: Path) -> dict:
    """One measurement alone in a fresh process (this script with --_child): its result and peak memory."""
    return run_script_child(__file__, ["--_child", step, "--_store", str(store), "--_work", str(work),
                                       "--memory-budget-mb", str(args.memory_budget_mb), "--fit-epochs", str(args.fit_epochs),
                                       "--sweep-epochs", str(args.sweep_epochs), "--n-boot", str(args.n_boot), "--device", args.device],
                            f"{step} child")


# ---- curves ----------------------------------------------------------------------------------


def loglog_slope(x, y) -> float | None:
    """Least-squares slope of log y on log x (None with fewer than two positive points)."""
    pts = [(a, b) for a, b in zip(x, y) if a and b and a > 0 and b > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return round(float(np.polyfit(lx, ly, 1)[0]), 3)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    rows = [s["store"]["n_rows"] for s in sizes]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for step, label in (("fit", "fit, s/epoch"), ("sweep", "sweep (18 fits), s"), ("score", "filter scoring, s"), ("eval", "eval, s")):
        ax_t.plot(rows, [s[step]["seconds_per_epoch"] if step == "fit" else s[step]["seconds"] for s in sizes], "o-", label=label)
        ax_m.plot(rows, [s[step]["peak_rss_mb"] for s in sizes], "o-", label=step)
    ax_m.plot(rows, [s["store"]["bytes_on_disk"] / 2**20 for s in sizes], "k--", lw=1, label="the store's states on disk")
    ax_m.axhline(result["settings"]["memory_budget_mb"], color="grey", ls="-.", lw=1, label="--memory-budget-mb")
    budget_rows = result["settings"]["memory_budget_mb"] * 2**20 / (4 * HIDDEN)
    for ax in (ax_t, ax_m):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stored rows (576-wide float16 states)")
        ax.axvline(budget_rows, color="grey", ls=":", lw=1)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_ylabel("seconds")
    ax_m.set_ylabel("peak RSS of the process, MB")
    ax_t.set_title("time (dotted: rows at --memory-budget-mb)")
    ax_m.set_title("peak memory against the data's size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------


def add_cli_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1e5,1e6,1e7", help="approximate stored rows of each store")
    p.add_argument("--work", type=Path, default=Path("/tmp/scale"), help="where the synthetic stores and checkpoints go (never the repo)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    p.add_argument("--png", type=Path, default=None, help="plot (default: the JSON's path with .png)")
    p.add_argument("--mean-len", type=int, default=200, help="mean stored rows per trajectory")
    p.add_argument("--memory-budget-mb", type=float, default=2048.0, help="fit/eval budget (FitConfig's --memory-budget-mb)")
    p.add_argument("--fit-epochs", type=int, default=3, help="epochs of the one fit (patience = epochs: no early stop)")
    p.add_argument("--sweep-epochs", default="1", help="epochs per sweep fit (each fit is also evaluated): one number, or one per size")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the evaluations")
    p.add_argument("--steps", default=",".join(STEPS), help="which measurements (fit is needed by score and eval)")
    p.add_argument("--device", default="cpu", help="the probe's torch device for fit, sweep, scoring and eval (cpu, cuda)")
    p.add_argument("--keep-stores", action="store_true", help="keep the stores under --work (deleted by default)")
    p.add_argument("--_child", choices=STEPS, help=argparse.SUPPRESS)
    p.add_argument("--_store", help=argparse.SUPPRESS)
    p.add_argument("--_work", help=argparse.SUPPRESS)


def main(args) -> int:
    if args._child:
        args.sweep_epochs = int(args.sweep_epochs)
        child_main(args)
        return 0
    from probekit.io import write_json

    sizes = parse_sizes(args.sizes)
    sweep_epochs = [int(x) for x in args.sweep_epochs.split(",")]
    sweep_epochs = sweep_epochs * len(sizes) if len(sweep_epochs) == 1 else sweep_epochs
    if len(sweep_epochs) != len(sizes):
        print("--sweep-epochs: give one number or one per size", file=sys.stderr)
        return 2
    steps = [s for s in STEPS if s in args.steps.split(",")]
    result = {
        **results_header("cost curves: fit, sweep, filter scoring and eval against store rows (one 576-wide layer)",
                         machine={**machine(*MACHINE_FIELDS), "probe_dtype": "float32 (stored states float16)", **machine(*MACHINE_AFTER)}),
        "settings": {"sizes": sizes, "mean_rows_per_trajectory": args.mean_len, "memory_budget_mb": args.memory_budget_mb,
                     "fit_epochs": args.fit_epochs, "sweep_epochs": sweep_epochs, "n_boot": args.n_boot, "shard_size": SHARD_SIZE,
                     "probe_device": args.device,
                     "sweep_grid": {"lams": SWEEP_LAMS, "seeds": SWEEP_SEEDS}},
        "data": ("SYNTHETIC states written through probekit's store writer (write_shard, build_manifest/finalize, write_pairs), "
                 f"not extracted from a model: noise rows (N(0,1) per feature, sampled from a pool of {POOL_ROWS}) plus "
                 f"+{SIGNAL}·u on correct trajectories and on incorrect ones before a random error token, -{SIGNAL}·u from it; "
                 "groups of 2 correct + 2 incorrect, 4 pairs per group"),
        "memory_method": "each measurement alone in a fresh child process; peak = VmHWM of /proc/self/status at its end "
                         "(includes the ~300 MB of imported libraries: rss_before_mb)",
        "sizes": [],
    }
    for n_rows, s_epochs in zip(sizes, sweep_epochs):
        store = args.work / f"store-{n_rows:.0e}"
        work = args.work / f"work-{n_rows:.0e}"
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"[{n_rows:.0e}] writing the planted store ...", file=sys.stderr, flush=True)
        entry = {"store": write_planted_store(store, n_rows, args.mean_len)}
        print(f"[{n_rows:.0e}] {entry['store']}", file=sys.stderr, flush=True)
        args.sweep_epochs = s_epochs
        for step in steps:
            entry[step] = run_child(args, step, store, work)
            print(f"[{n_rows:.0e}] {step}: {entry[step]}", file=sys.stderr, flush=True)
        if "sweep" in entry:
            entry["sweep"]["seconds_per_fit_epoch"] = round(entry["sweep"]["seconds"] / (entry["sweep"]["n_fits"] * s_epochs), 3)
        result["sizes"].append(entry)
        write_json(args.out, result)  # each finished size is kept, should a later (larger) one not finish
        if not args.keep_stores:
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    summarise(result, steps)
    result["machine"].update(machine("load_average_at_end=load_average"))
    write_json(args.out, result)
    if len(sizes) > 1 and set(STEPS) <= set(steps):
        plot(result, args.png or args.out.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=1))
    return 0


def summarise(result: dict, steps: list[str]) -> None:
    """Log-log slopes of time and memory against rows, and the targets."""
    sizes = result["sizes"]
    rows = [s["store"]["n_rows"] for s in sizes]
    time_of = {"fit": "seconds_per_epoch", "sweep": "seconds_per_fit_epoch", "score": "seconds", "eval": "seconds"}
    slopes = {f"{step}_time": loglog_slope(rows, [s[step][time_of[step]] for s in sizes]) for step in steps}
    slopes.update({f"{step}_peak_rss": loglog_slope(rows, [s[step]["peak_rss_mb"] for s in sizes]) for step in steps})
    budget_rows = result["settings"]["memory_budget_mb"] * 2**20 / (4 * HIDDEN)
    over = [s for s in sizes if s["store"]["n_rows"] > budget_rows]
    summary: dict = {"rows": rows, "loglog_slopes": slopes, "rows_at_memory_budget": int(budget_rows),
                     "time_target": f"every time slope <= {TIME_SLOPE_TARGET}",
                     "time_target_met": all(v is not None and v <= TIME_SLOPE_TARGET for k, v in slopes.items() if k.endswith("_time"))}
    for step in ("fit", "eval"):
        if step in steps and len(over) >= 2:
            peaks = [s[step]["peak_rss_mb"] for s in over]
            summary[f"{step}_peak_rss_over_budget_mb"] = peaks
            summary[f"{step}_peak_rss_slope_over_budget"] = loglog_slope([s["store"]["n_rows"] for s in over], peaks)
    biggest = max(sizes, key=lambda s: s["store"]["n_rows"])
    if "score" in steps:
        summary["score_seconds_at_largest"] = biggest["score"]["seconds"]
        summary["score_target"] = f"1e7 rows in < {SCORE_TARGET_S:g} s"
        summary["score_target_met"] = (bool(biggest["score"]["seconds"] < SCORE_TARGET_S) if biggest["store"]["n_rows"] >= 9e6 else None)
    result["summary"] = summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
