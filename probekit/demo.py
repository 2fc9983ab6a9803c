"""`probekit demo` / `make demo`: the whole method end to end on the bundled defaults.

Synthetic arithmetic problems (known first-error positions) -> extract with the
frozen model -> fit the baseline reward probe (λ = 0) and the goal-conditioned
probe (λ > 0) on the same group split -> evaluate both on held-out problems ->
Q-value filtering with majority voting -> generation in the loop (sample new
problems with the frozen model, plainly and with online early stopping by the
goal probe, same seeds) -> one summary table.
Every stage writes its usual outputs under `out/`, so each can be inspected or
re-run with the individual commands.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

from probekit.config import DemoConfig, FitConfig
from probekit.data.prompts import write_prompts
from probekit.data.schema import derive_pairs, write_pairs, write_trajectories
from probekit.data.synth import synth_problems, synth_prompts
from probekit.eval.evaluate import evaluate_checkpoint, write_evaluation
from probekit.extract.options import ExtractOptions
from probekit.extract.run import extract
from probekit.filter.config import FilterConfig
from probekit.filter.filtering import filter_store
from probekit.filter.voting import Ballot, accuracy
from probekit.generate.config import GenerateConfig
from probekit.generate.generation import generate
from probekit.generate.stopping import OnlineStop
from probekit.io import write_json
from probekit.outputs import claim_output
from probekit.pipeline import fit_probe
from probekit.progress import Progress
from probekit.store import Store

STAGES = ("data", "store", "fit-baseline", "fit-goal", "eval-baseline", "eval-goal", "filter-baseline", "filter-goal", "generate-plain",
          "generate-filtered", "generate-prompts.jsonl", "summary.json")


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), *, overwrite: bool = False, progress: Progress | None = None,
             log: Callable[[str], None] = lambda text: None, loaded=None) -> dict:
    """Run every stage into `out`; return the summary (also written to out/summary.json).

    `log` receives one line per stage; `loaded` (a `probekit.models.LoadedModel`) skips loading the model.
    """
    config.validate()
    with claim_output(out, "demo", STAGES, overwrite=overwrite) as out_dir, torch_threads(config.threads):  # held until the last stage is done
        out_dir.record(*STAGES[:-1])
        return _run_demo(out_dir, config, overwrite, progress, log, loaded)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch CPU threads (0: as they are), then restore the count.

    A parallel reduction sums in an order that depends on the thread count, so a
    fixed count makes the demo's numbers the same on a 2-core laptop and a
    64-core server (the fits run on one thread, the only count at which two fits
    of one seed write the same weights).
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_demo(out_dir, config: DemoConfig, overwrite: bool, progress: Progress | None, log: Callable[[str], None], loaded) -> dict:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    log(f"1/6 generating {config.n_problems} synthetic problems x {config.solutions} solutions (seed {config.seed})")
    trajectories = synth_problems(config.n_problems, solutions_per_problem=config.solutions, seed=config.seed)
    with claim_output(out_dir.path / "data", "data", ("trajectories.jsonl", "pairs.jsonl"), overwrite=overwrite) as data_dir:
        with data_dir.commit_set():
            write_trajectories(data_dir.file("trajectories.jsonl"), trajectories)
            write_pairs(data_dir.file("pairs.jsonl"), derive_pairs(trajectories))
    data_file, pairs_file = data_dir.path / "trajectories.jsonl", data_dir.path / "pairs.jsonl"
    timings["data"] = time.perf_counter() - t0

    log(f"2/6 extracting hidden states with {config.model} (resumes if interrupted)")
    t = time.perf_counter()
    extract(ExtractOptions(trajectories=data_file, out=out_dir.path / "store", pairs=pairs_file, model=config.model,
                           layers=config.layers, max_batch_tokens=config.max_batch_tokens, model_dtype=config.model_dtype,
                           overwrite=overwrite),
            loaded=loaded, progress=progress)
    store = Store(out_dir.path / "store")
    timings["extract"] = time.perf_counter() - t

    probes = {"baseline (λ=0)": 0.0, f"goal-conditioned (λ={config.lam:g})": config.lam}
    rows, details = [], {}
    for name, lam in probes.items():
        tag = "baseline" if lam == 0 else "goal"
        log(f"3/6 fitting the {name} probe")
        t = time.perf_counter()
        fit_cfg = FitConfig().vary(lam=lam, epochs=config.epochs, seed=config.seed, n_boot=config.n_boot)
        with torch_threads(1):  # a fit is deterministic per seed only on one thread (parallel reductions in the backward pass)
            ckpt = fit_probe(store, out_dir.path / f"fit-{tag}", fit_cfg, overwrite=overwrite, progress=progress)
        timings[f"fit_{tag}"] = time.perf_counter() - t
        log(f"4/6 evaluating the {name} probe on held-out problems")
        ev = evaluate_checkpoint(ckpt, store, "test", n_boot=config.n_boot, seed=config.seed, progress=progress)
        with claim_output(out_dir.path / f"eval-{tag}", "eval", ("metrics.json", "prefix_auroc.png"), overwrite=overwrite) as eval_dir:
            write_evaluation(ev, eval_dir)
        log(f"5/6 Q-value filtering with the {name} probe (threshold chosen on validation problems)")
        fl = filter_store(ckpt, store, out_dir.path / f"filter-{tag}", FilterConfig(threshold="auto", seed=config.seed),
                          overwrite=overwrite, progress=progress)
        details[tag] = {"eval": ev, "filter": fl, "checkpoint": ckpt}
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
    generation = None
    if config.generate_problems:
        log(f"6/6 generation in the loop: {config.generate_problems} new problems x {config.solutions} samples, plain and with online early "
            "stopping by the goal probe (same seeds)")
        t = time.perf_counter()
        goal = details["goal"]
        generation = _generation_stage(out_dir, config, goal["checkpoint"], goal["filter"]["chosen_threshold"], store.layers, loaded,
                                       overwrite, progress)
        timings["generate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    summary = {
        "model": config.model,
        "layer": store.layers[0],
        "n_trajectories": len(store),
        "rows": rows,
        "baselines": details["baseline"]["eval"].get("baselines"),
        "filter_baselines": details["goal"]["filter"]["report"].get("baselines"),
        "generation": generation,
        "plots": sorted(str(p) for p in out_dir.path.glob("*/*.png")),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    with out_dir.commit_set():
        write_json(out_dir.file("summary.json"), summary)
    return summary


def _generation_stage(out_dir, config: DemoConfig, ckpt, threshold: float, layers: list[int], loaded, overwrite: bool,
                      progress: Progress | None) -> dict:
    """Sample new 1-step few-shot problems twice with the same seeds: plainly, and stopping samples online by the goal probe.

    The probe was fitted on written solutions in the same `Step k: ... / A: n`
    format the few-shot prompts ask for; the threshold is the one the filter
    chose on validation problems. Reports what was generated and voted, not a
    simulation.
    """
    prompts = synth_prompts(config.generate_problems, 1, 1, shots=2, seed=config.seed + 1)
    with out_dir.commit_set():
        write_prompts(out_dir.file("generate-prompts.jsonl"), prompts)
    gen = GenerateConfig(model=config.model, samples=config.solutions, max_new_tokens=config.generate_tokens, seed=config.seed,
                         template="raw", layers=",".join(map(str, layers)), answer="synth", stop="\n\n", model_dtype=config.model_dtype)
    runs = {}
    for name, stop in (("plain", None), ("filtered", OnlineStop(ckpt, threshold, chosen_on="the demo's filter (validation problems)"))):
        res = generate(prompts, out_dir.path / f"generate-{name}", gen, stop=stop, loaded=loaded, overwrite=overwrite, progress=progress)
        ballot = Ballot.of_trajectories(res.trajectories)
        runs[name] = {k: res.stats[k] for k in ("tokens_generated", "seconds", "seconds_admitting", "seconds_decoding", "decode_steps",
                                                 "accuracy_per_sample", "n_stopped_early", "n_fallback_groups")}
        runs[name]["vote_accuracy"] = accuracy(ballot.vote(None))
    plain, filtered = runs["plain"], runs["filtered"]
    runs["threshold"] = threshold
    runs["tokens_saved"] = 1 - filtered["tokens_generated"] / plain["tokens_generated"]
    runs["wall_clock_saved"] = 1 - filtered["seconds"] / plain["seconds"]
    runs["decoding_saved"] = 1 - filtered["seconds_decoding"] / plain["seconds_decoding"] if plain["seconds_decoding"] else None
    runs["why"] = why_wall_clock(plain, filtered)
    return runs


def why_wall_clock(plain: dict, filtered: dict) -> str:
    """One line on why the wall-clock saved differs from the tokens saved, from the two runs' own time split and counts.

    Stopping saves decoding steps only: the prefill of each prompt is paid
    either way, a step costs nearly as much with fewer rows in the batch
    (decoding is batched), the filtered run also scores every new token with
    the probe, and a group whose samples were all stopped is decoded again in
    full (a fallback).
    """
    return (f"stopping saves decoding steps only ({plain['decode_steps']} -> {filtered['decode_steps']}; a batched step costs about "
            f"as much with fewer rows, and the filtered run also scores each token with the probe); prefill "
            f"({plain['seconds_admitting']:.1f} s / {filtered['seconds_admitting']:.1f} s) is paid either way; "
            f"{filtered['n_fallback_groups']} fallback groups decoded again")
