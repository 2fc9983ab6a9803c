"""Steering toward the Helpful-Harmless "harmless" goal, judged by a probe fitted on other dialogues.

Harmless-base test dialogues are split three ways: A fits the steering probe
(its "mean" goal is the mean φ of the chosen, i.e. more harmless, answers'
final states), B fits a judge probe of the same kind on disjoint dialogues,
and C gives the prompts (each dialogue up to its last "Assistant:"). For each
seed, Q-guided decoding toward A's goal (each search of `STEER_VARIANTS`,
`--variants`) is compared with plain sampling from the same prompts: a single
sample, and best-of-n by A's reward at the same number of generated tokens
as that search. The mean number of newlines per response is recorded too
(blank-line runs were the failure of the steering before its decode fix). Success is B's reward on the final token of the
response (higher = more like the chosen answers), never A's own scores.
Intervals: 95 % bootstrap over prompts, seeds averaged within a prompt.

    .venv/bin/python benchmarks/hh_steering.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generation_task import boot_ci  # noqa: E402
from benchmarks.harness import Clock, add_threads_option, apply_threads, console, machine, machine_line, results_header  # noqa: E402
from probekit.io import write_json  # noqa: E402

LAYER = 15
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 40, "stop": "\n\nHuman:"}
SEARCH = {"beams": 2, "candidates": 2, "goal": "mean"}
# The searches compared: SteerConfig options beside SEARCH. "guarded_mean_step" redraws blank-line steps and ranks a
# step by the cosine of its mean φ (the official code's step score).
# "official" is the official code's step score and selection (`steer --step-score official`) without self-evaluation
# (its --not_use_conf: the default judging prompt is for math steps); "official_self_eval" adds it with a harmlessness prompt.
STEER_VARIANTS = {
    "plain": {},
    "guarded_mean_step": {"empty_steps": "resample", "step_score": "mean"},
    "official": {"step_score": "official", "unique_candidates": True},
    # + the model's own harmlessness judgement (c^w·p^(1-w), r = 0): a harmlessness version of the official helpsteer
    # judging prompt (its "(A) Helpful / (B) Unhelpful" choice), benchmarks/prompts/hh_harmless_self_eval.txt
    "official_self_eval": {"step_score": "official", "unique_candidates": True, "self_eval": True,
                           "self_eval_prompt": "benchmarks/prompts/hh_harmless_self_eval.txt"},  # (run from the repository root)
}
DEFAULT_VARIANTS = "plain,guarded_mean_step"  # the recorded run's; the official one is recorded in official_steering_hh.json


def judge_rewards(trajectories, path: Path, judge, loaded) -> np.ndarray:
    """The judge's reward on the last token of each trajectory, extracted from the exact generated token ids."""
    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.probe.scoring import Scorer, score_store
    from probekit.store import Store

    data = path / "trajectories.jsonl"
    path.mkdir(parents=True, exist_ok=True)
    write_trajectories(data, trajectories)
    extract(ExtractOptions(trajectories=data, out=path / "store", layers=str(LAYER), template="raw", positions="last", max_length=1024,
                           overwrite=True), loaded=loaded)
    store = Store(path / "store")
    scores = score_store(store, Scorer.from_checkpoint(judge, kinds=["mean"]), judge.layers)
    by_id = dict(zip(store.meta.id, scores.last(scores.reward)))
    return np.asarray([by_id[t.id] for t in trajectories])


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", default=None, help="folder with hh_rlhf/harmless-base/test.jsonl.gz, or a `probekit data fetch` name")
    ap.add_argument("--n-fit", type=int, default=200, help="dialogues for each of the two probes")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"the searches, a comma list of {', '.join(STEER_VARIANTS)}")
    add_threads_option(ap)
    ap.add_argument("--work", default="runs/hh-steering")
    ap.add_argument("--out", default="benchmarks/results/hh_steering.json")


def main(args) -> int:
    from probekit.config import FitConfig
    from probekit.data.fetch import resolve_data_dir
    from probekit.data.hh import hh_pairs
    from probekit.data.prompts import Prompt
    from probekit.data.schema import write_pairs, write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.generate.config import GenerateConfig
    from probekit.generate.generation import generate
    from probekit.models import load_model
    from probekit.pipeline import fit_probe
    from probekit.probe.scoring import Scorer, score_store
    from probekit.generate.config import SteerConfig
    from probekit.generate.steering import steer
    from probekit.store import Store

    threads = apply_threads(args.threads)
    started = Clock().start()
    load_at_start = machine("load_average_at_start=load_average")
    data_dir = resolve_data_dir(args.data_dir, default=Path(__file__).resolve().parents[2] / "shared" / "data", need=("hh-rlhf-harmless",))
    trajs, pairs = hh_pairs(data_dir / "hh_rlhf/harmless-base/test.jsonl.gz")
    groups = sorted({t.group for t in trajs}, key=lambda g: int(g.split("-")[1]))
    rng = np.random.default_rng(0)
    order = [groups[i] for i in rng.permutation(len(groups))]
    parts = {"A": set(order[:args.n_fit]), "B": set(order[args.n_fit:2 * args.n_fit])}
    prompt_groups = order[2 * args.n_fit:2 * args.n_fit + args.n_prompts]
    work = Path(args.work)
    loaded = load_model("smollm2-135m", device="cpu")
    ckpts = {}
    for name, members in parts.items():
        folder = work / f"fit-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        sub = [t for t in trajs if t.group in members]
        ids = {t.id for t in sub}
        write_trajectories(folder / "trajectories.jsonl", sub)
        write_pairs(folder / "pairs.jsonl", [p for p in pairs if p.chosen in ids])
        extract(ExtractOptions(trajectories=folder / "trajectories.jsonl", pairs=folder / "pairs.jsonl", out=folder / "store",
                               layers=str(LAYER), template="raw", positions="stride:2", max_length=512), loaded=loaded)
        ckpts[name] = fit_probe(Store(folder / "store"), folder / "probe", FitConfig().vary(layer=LAYER), overwrite=True)
        console.log(f"probe {name}: valid pairwise accuracy {ckpts[name].metrics['valid']['probe']['pairwise_accuracy']['value']:.3f}")
    steer_ckpt, judge = ckpts["A"], ckpts["B"]
    first = {t.group: t for t in trajs}
    prompts = [Prompt(g, first[g].prompt) for g in prompt_groups]
    cfg = GenerateConfig(samples=args.samples, template="raw", layers=str(LAYER), answer="last-number", **SAMPLING)

    variants = args.variants.split(",")
    plain_judge, plain_best, plain_tokens, plain_newlines = [], [], [], []
    steered = {v: {"judge": [], "tokens": [], "newlines": [], "seconds": []} for v in variants}
    for s in range(args.seeds):
        plain = generate(prompts, work / f"plain-{s}", dataclasses.replace(cfg, seed=s), loaded=loaded, overwrite=True)
        store = Store(plain.out / "store")
        j = score_store(store, Scorer.from_checkpoint(judge, kinds=["mean"]), judge.layers)
        a = score_store(store, Scorer.from_checkpoint(steer_ckpt, kinds=["mean"]), steer_ckpt.layers)
        judge_r, steer_r = j.last(j.reward), a.last(a.reward)
        plain_judge.append([judge_r[i * args.samples:(i + 1) * args.samples] for i in range(len(prompts))])
        plain_best.append([steer_r[i * args.samples:(i + 1) * args.samples] for i in range(len(prompts))])
        plain_tokens.append(float(store.meta.completion_tokens.mean()))
        plain_newlines.append(float(np.mean([t.completion.count("\n") for t in plain.trajectories])))
        for name in variants:
            step_started = Clock().start()
            res = steer(prompts, work / f"steer-{name}-{s}", dataclasses.replace(cfg, seed=s), SteerConfig(**SEARCH, **STEER_VARIANTS[name]),
                        steer_ckpt, loaded=loaded, overwrite=True)
            best = [t for t in res.trajectories if t.meta["rank"] == 0]
            steered[name]["judge"].append(judge_rewards(best, work / f"judge-{name}-{s}", judge, loaded))
            steered[name]["tokens"].append(res.stats["tokens_generated"] / len(prompts))
            steered[name]["newlines"].append(float(np.mean([t.completion.count("\n") for t in best])))
            steered[name]["seconds"].append(round(step_started.elapsed, 1))
            console.log(f"seed {s}: {name} judge reward {np.mean(steered[name]['judge'][-1]):.3f}, plain {np.mean(judge_r):.3f} ({steered[name]['seconds'][-1]} s)")

    pj, pb = np.asarray(plain_judge), np.asarray(plain_best)  # [seeds, prompts, samples]
    searches = {}
    for name, r in steered.items():
        n_equal = int(np.clip(round(np.mean(r["tokens"]) / np.mean(plain_tokens)), 1, args.samples))
        # best-of-n by the steering probe's reward over the first n samples of each prompt (same budget as the search)
        pick = np.argmax(pb[:, :, :n_equal], axis=2)
        best_of_n = np.take_along_axis(pj[:, :, :n_equal], pick[:, :, None], axis=2)[:, :, 0].mean(axis=0)
        judged = np.mean(r["judge"], axis=0)
        searches[name] = {
            "options": STEER_VARIANTS[name], "judge_reward": boot_ci(judged), "tokens_per_prompt": round(float(np.mean(r["tokens"])), 1),
            "newlines_per_response": round(float(np.mean(r["newlines"])), 2),
            "seconds_per_seed_steer_and_judge": r["seconds"],
            "best_of_n_by_steering_probe_reward": {"n": n_equal, "judge_reward": boot_ci(best_of_n)},
            "steered_minus_single_sample": boot_ci(judged - pj[:, :, 0].mean(axis=0)),
            "steered_minus_best_of_n": boot_ci(judged - best_of_n)}
    result = {
        **results_header(exact_command=False, day_only=True, machine=machine_line()), **machine("git_commit"),
        **load_at_start, **machine("load_average_at_end=load_average"),
        "model": "smollm2-135m", "model_dtype": str(loaded.dtype).replace("torch.", ""), "torch_threads": threads, "layer": LAYER,
        "data": {"source": "hh_rlhf/harmless-base/test.jsonl.gz", "fit_dialogues_each": args.n_fit, "prompts": len(prompts),
                 "split": "dialogues shuffled (seed 0): A fits the steering probe, B the judge, C gives the prompts; disjoint"},
        "sampling": {**SAMPLING, "stop": "\\n\\nHuman:"}, "seeds": args.seeds, "samples": args.samples, "search": SEARCH,
        "probes": {k: {"valid_pairwise_accuracy": c.metrics["valid"]["probe"]["pairwise_accuracy"]} for k, c in ckpts.items()},
        "judge": "probe B's reward on the response's last token (higher = closer to B's chosen answers)",
        "intervals": "95 % bootstrap over prompts, seeds averaged within a prompt",
        "plain_single_sample": {"judge_reward": boot_ci(pj[:, :, 0].mean(axis=0)), "tokens_per_sample": round(float(np.mean(plain_tokens)), 1),
                                "newlines_per_response": round(float(np.mean(plain_newlines)), 2)},
        "plain_mean_of_samples": {"judge_reward": boot_ci(pj.mean(axis=(0, 2)))},
        "searches": searches,
        "seconds_total": round(started.elapsed, 1),
    }
    write_json(args.out, result)
    console.print({k: result[k] for k in ("probes", "plain_single_sample", "searches")})
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
