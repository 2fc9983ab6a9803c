"""`probekit demo` / `make demo`: the whole method end to end on the bundled defaults.

Synthetic arithmetic problems (known first-error positions) -> extract with the
frozen model -> fit the baseline reward probe (λ = 0) and the goal-conditioned
probe (λ > 0) on the same group split -> evaluate both on held-out problems ->
Q-value filtering with majority voting -> one summary table.
Every stage writes its usual outputs under `out/`, so each can be inspected or
re-run with the individual commands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from probekit.data.schema import derive_pairs, write_pairs, write_trajectories


@dataclass
class DemoOptions:
    out: Path
    model: str = "smollm2-135m"
    n_problems: int = 300
    solutions: int = 4
    lam: float = 0.5
    layers: str | None = None
    epochs: int = 30
    seed: int = 0
    max_batch_tokens: int = 8192
    n_boot: int = 1000
    progress: bool = True


def _say(console, text: str) -> None:
    if console is not None:
        console.print(f"[bold cyan]demo[/] {text}")


def run_demo(opts: DemoOptions, console=None, loaded=None) -> dict:
    """Run every stage; return the summary (also written to out/summary.json)."""
    from probekit.data.synth import synth_problems
    from probekit.evaluate import evaluate_checkpoint
    from probekit.extract.run import ExtractOptions, extract
    from probekit.filtering import filter_store
    from probekit.io import write_json
    from probekit.probe.train import FitOptions, fit
    from probekit.store import Store

    out = Path(opts.out)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    _say(console, f"1/5 generating {opts.n_problems} synthetic problems x {opts.solutions} solutions (seed {opts.seed})")
    trajectories = synth_problems(opts.n_problems, solutions_per_problem=opts.solutions, seed=opts.seed)
    data_file = out / "data" / "trajectories.jsonl"
    write_trajectories(data_file, trajectories)
    write_pairs(data_file.with_name("pairs.jsonl"), derive_pairs(trajectories))
    timings["data"] = time.perf_counter() - t0

    _say(console, f"2/5 extracting hidden states with {opts.model} (resumes if interrupted)")
    t = time.perf_counter()
    extract(
        ExtractOptions(trajectories=data_file, out=out / "store", pairs=data_file.with_name("pairs.jsonl"), model=opts.model,
                       layers=opts.layers, max_batch_tokens=opts.max_batch_tokens, progress=opts.progress),
        loaded=loaded,
    )
    store = Store(out / "store")
    timings["extract"] = time.perf_counter() - t

    probes = {"baseline (λ=0)": 0.0, f"goal-conditioned (λ={opts.lam:g})": opts.lam}
    rows, details = [], {}
    for i, (name, lam) in enumerate(probes.items()):
        tag = "baseline" if lam == 0 else "goal"
        _say(console, f"3/5 fitting the {name} probe")
        t = time.perf_counter()
        ckpt = fit(FitOptions(store=out / "store", out=out / f"fit-{tag}", lam=lam, epochs=opts.epochs, seed=opts.seed,
                              n_boot=opts.n_boot, progress=opts.progress), console=console if opts.progress else None)
        timings[f"fit_{tag}"] = time.perf_counter() - t
        _say(console, f"4/5 evaluating the {name} probe on held-out problems")
        ev = evaluate_checkpoint(ckpt, store, which="test", out_dir=out / f"eval-{tag}", n_boot=opts.n_boot, seed=opts.seed)
        _say(console, f"5/5 Q-value filtering with the {name} probe (threshold chosen on validation problems)")
        fl = filter_store(ckpt, store, out / f"filter-{tag}", threshold="auto", seed=opts.seed)
        details[tag] = {"eval": ev, "filter": fl}
        probe, report = ev["probe"], fl["report"]
        rows.append({
            "probe": name,
            "auroc": probe["auroc"],
            "q_auroc": probe.get("q_auroc_mean"),
            "pairwise_accuracy": probe["pairwise_accuracy"],
            "beats_baselines": ev.get("beats_baselines"),
            "vote_accuracy": report.get("accuracy_majority"),
            "vote_accuracy_filtered": report.get("accuracy_filtered"),
            "tokens_saved": report.get("tokens_saved_share"),
            "tokens_saved_effective": report.get("tokens_saved_share_effective"),
            "threshold": fl["chosen_threshold"],
            "error_localisation": probe.get("error_localisation"),
        })
    timings["total"] = time.perf_counter() - t0
    summary = {
        "model": opts.model,
        "layer": store.layers[0],
        "n_trajectories": len(store),
        "rows": rows,
        "baselines": details["baseline"]["eval"].get("baselines"),
        "filter_baselines": details["goal"]["filter"]["report"].get("baselines"),
        "plots": sorted(str(p) for p in out.glob("*/*.png")),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    write_json(out / "summary.json", summary)
    return summary


def summary_table(summary: dict):
    """A rich table: one row per probe, then the trivial baselines."""
    from cli.common import rich_table

    def ci(m) -> str:
        if not m or m.get("value") is None:
            return "-"
        return f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]" if m.get("lo") is not None else f"{m['value']:.3f}"

    def pct(x) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    rows = [
        [r["probe"], ci(r["auroc"]), ci(r["q_auroc"]), ci(r["pairwise_accuracy"]), pct(r["vote_accuracy"]),
         pct(r["vote_accuracy_filtered"]), f"{pct(r['tokens_saved'])} / {pct(r['tokens_saved_effective'])}", "" if r["beats_baselines"] in (True, None) else "no"]
        for r in summary["rows"]
    ]
    for name, b in (summary.get("baselines") or {}).items():
        if b:
            rows.append([f"[dim]{name}[/]", ci(b.get("auroc")), "-", ci(b.get("pairwise_accuracy")), "-", "-", "-", ""])
    return rich_table(
        f"probekit demo: {summary['model']} layer {summary['layer']}, {summary['n_trajectories']} trajectories (test problems)",
        ["probe", "AUROC [95% CI]", "Q AUROC", "pairwise acc", "vote acc", "vote acc (filtered)", "tokens saved (official / effective)", "beats baselines"],
        rows,
    )
