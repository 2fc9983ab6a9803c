"""Contrastive rewards (Shen et al. 2024) on GSM8K labelled model solutions: does subtracting a per-problem baseline help?

r_CR(x, y) = r(x, y) − mean_j r(x, y_j): one penalty per problem, from baseline responses y_j. On the GSM8K test
problems' labelled solutions (4 per problem, human-checked correctness), with a probe fitted on other problems:

* ranking ACROSS problems: AUROC of correct vs incorrect over all held-out solutions, for the raw reward, the
  contrastive reward with a leave-one-out baseline (the mean reward of the problem's other labelled solutions) and
  with a fresh baseline (`probekit baseline`: k responses per problem sampled from the frozen model), with
  problem-bootstrap intervals, within length strata, beside the completion-length baseline;
* difficulty: correlation of the per-problem baseline with the problem's accuracy (fraction of its labelled
  solutions that are correct), with a problem-bootstrap interval;
* variance across problems of the raw and the contrastive reward (share of the total variance between problems);
* filtering at equal token budget: keep the solutions above a threshold on the raw or on the contrastive reward, chosen
  so that both keep the same fraction of the solutions' tokens, and compare majority-vote accuracy (problems whose
  kept solutions give none fall back to all of them) and the share of kept solutions that are correct.

One fixed test set (the first --test-problems problems) for every seed, so the seeds (train/valid split, init) give
the across-seed interval; fresh baselines are sampled once, for the first --fresh-problems test problems, and
scored by each seed's probe through the API (`probekit.reward.RewardProbe`).

Results: benchmarks/results/contrastive_rewards.json and the README's section on contrastive rewards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import ArgumentParser, Clock, add_threads_option, apply_threads, console, machine, print_stdout, results_header, table  # noqa: E402
from benchmarks.studies import add_study_options, build_data, data_folder, extract_store, fmt, mean_ci  # noqa: E402

SIGNALS = ("raw", "contrastive_loo", "length")


def add_cli_args(ap: ArgumentParser) -> None:
    add_study_options(ap, "contrastive_rewards", "auto", "dtype the model computes in (auto: bfloat16 where this CPU runs it faster)")
    ap.add_argument("--layer", type=int, default=16, help="store layer the probes read (the recorded GSM8K sweep's)")
    ap.add_argument("--lam", type=float, default=0.5, help="λ of the probes (make reproduce's)")
    ap.add_argument("--gsm8k-problems", type=int, default=700, help="first N GSM8K test problems (x 4 labelled solutions)")
    ap.add_argument("--test-problems", type=int, default=150, help="the first N of them are the held-out test set of every seed")
    ap.add_argument("--fresh-problems", type=int, default=48, help="test problems that get freshly sampled baselines")
    ap.add_argument("--fresh-samples", type=int, default=4, help="baseline responses sampled per problem (k)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="most tokens of a sampled baseline response")
    ap.add_argument("--budgets", default="0.5,0.75", help="fractions of the solutions' tokens kept by the filters")
    # build_data also writes the corrupted-gold and HH sets, which this study does not read: one record each
    ap.add_argument("--corrupt-problems", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--hh-dialogues", type=int, default=1, help=argparse.SUPPRESS)
    add_threads_option(ap)


def _split(groups: list[str], n_test: int, seed: int) -> dict:
    """The first n_test problems test; the rest split 80/20 into train and valid by the seed."""
    test, rest = groups[:n_test], np.asarray(groups[n_test:])
    rest = rest[np.random.default_rng(seed).permutation(len(rest))]
    n_valid = len(rest) // 5
    return {"train": rest[n_valid:].tolist(), "valid": rest[:n_valid].tolist(), "test": list(test)}


def _leave_one_out(values: np.ndarray, group_idx: np.ndarray) -> np.ndarray:
    sums = np.bincount(group_idx, weights=values)
    counts = np.bincount(group_idx)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[group_idx] - values) / (counts[group_idx] - 1)


def _bootstrap_corr(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict:
    """Pearson correlation over problems with a problem-bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    point = float(np.corrcoef(x, y)[0, 1])
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if np.std(x[i]) > 0 and np.std(y[i]) > 0:
            boots.append(np.corrcoef(x[i], y[i])[0, 1])
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (None, None)
    return {"value": point, "lo": float(lo), "hi": float(hi), "n_problems": int(len(x))}


def _between_share(values: np.ndarray, group_idx: np.ndarray) -> float:
    """Share of the variance of `values` that lies between problems (variance of the problem means / total)."""
    means = np.bincount(group_idx, weights=values) / np.bincount(group_idx)
    return float(np.var(means[group_idx]) / np.var(values))


def _vote(answers: np.ndarray, labels: np.ndarray, keep: np.ndarray, group_idx: np.ndarray) -> float:
    """Majority-vote accuracy over problems from the kept solutions (all of a problem's when none is kept)."""
    correct = []
    for g in np.unique(group_idx):
        m = group_idx == g
        use = m & keep if (m & keep).any() else m
        vals, counts = np.unique(answers[use], return_counts=True)
        top = vals[np.argmax(counts)]
        correct.append(bool(labels[m & (answers == top)].max()) if (m & (answers == top)).any() else False)
    return float(np.mean(correct))


def _budget_threshold(signal: np.ndarray, tokens: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the highest-signal solutions until `fraction` of all their tokens is kept."""
    order = np.argsort(-signal, kind="stable")
    kept_tokens = np.cumsum(tokens[order])
    n = int(np.searchsorted(kept_tokens, fraction * tokens.sum(), side="right"))
    keep = np.zeros(len(signal), bool)
    keep[order[:max(n, 1)]] = True
    return keep


def _aurocs(signals: dict, labels, group_idx, tokens, n_boot: int, seed: int) -> dict:
    from probekit.eval.length_control import quantile_edges
    from probekit.metrics import auroc_ci, bootstrap_counts

    counts = bootstrap_counts(int(group_idx.max()) + 1, n_boot, seed)
    strata = np.digitize(tokens, quantile_edges(tokens, 5))  # five length quintiles
    return {name: {"auroc": auroc_ci(s, labels, group_idx, counts), "auroc_strat": auroc_ci(s, labels, group_idx, counts, strata=strata)}
            for name, s in signals.items()}


def _fresh_baselines(ckpt_path: Path, loaded, test_groups: list[str], prompts_by_group: dict, work: Path, args) -> Path:
    """Sample --fresh-samples responses for the first --fresh-problems test problems once (probekit generate)."""
    from probekit.data.prompts import Prompt
    from probekit.generate.config import GenerateConfig
    from probekit.generate.generation import generate

    out = work / f"fresh-{args.fresh_problems}x{args.fresh_samples}-{args.max_new_tokens}"
    if (out / "trajectories.jsonl").exists():
        return out / "trajectories.jsonl"
    prompts = [Prompt(id=g, prompt=prompts_by_group[g][0], gold=prompts_by_group[g][1]) for g in test_groups[:args.fresh_problems]]
    config = GenerateConfig(samples=args.fresh_samples, max_new_tokens=args.max_new_tokens, answer="gsm8k", layers=str(args.layer),
                            template="chat", temperature=0.7, seed=0)
    console.print(f"[bold]sampling[/] {len(prompts)} x {args.fresh_samples} fresh baseline responses")
    generate(prompts, out, config, loaded=loaded, overwrite=True)
    return out / "trajectories.jsonl"


def main(args) -> None:
    apply_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    work = args.work.resolve()
    clock = Clock().start()

    from probekit.config import FitConfig
    from probekit.models import load_model
    from probekit.pipeline import fit_probe
    from probekit.probe.inputs import input_spec
    from probekit.probe.scoring import Scorer, score_store
    from probekit.reward import RewardProbe
    from probekit.store import Store

    files = build_data(data_folder(args.data_dir), work, args)
    loaded = load_model(args.model, dtype=args.model_dtype)
    store_path = extract_store(files["gsm8k"], work / "stores" / f"gsm8k-{args.model_tag}-L{args.layer}", "solutions", str(args.layer), args, loaded)
    store = Store(store_path)
    meta = store.meta
    groups_in_order = list(dict.fromkeys(meta.group.tolist()))
    trajs = [json.loads(line) for line in Path(files["gsm8k"]).read_text().splitlines()]
    prompts_by_group = {t["group"]: (t["prompt"], (t.get("meta") or {}).get("ground_truth")) for t in trajs}
    answers = np.asarray([a if a is not None else "" for a in meta.answer], dtype=object)
    test_groups = groups_in_order[:args.test_problems]
    fresh_groups = set(test_groups[:args.fresh_problems])
    per_seed = []
    fresh_file = None
    for seed in seeds:
        split = _split(groups_in_order, args.test_problems, seed)
        split_file = work / "splits" / f"seed{seed}.json"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text(json.dumps(split))
        config = FitConfig().vary(layer=args.layer, lam=args.lam, seed=seed, epochs=args.epochs, n_boot=200, split_file=split_file)
        ckpt = fit_probe(store, work / "runs" / f"seed{seed}", config, overwrite=True)
        scores = score_store(store, Scorer.from_checkpoint(ckpt), ckpt.layers)
        reward = scores.last(scores.reward)
        test = np.isin(meta.group, test_groups)
        group_idx = np.unique(meta.group[test], return_inverse=True)[1]
        r, labels, tokens = reward[test], meta.label[test].astype(int), meta.completion_tokens[test].astype(float)
        loo = _leave_one_out(r, group_idx)
        signals = {"raw": r, "contrastive_loo": r - loo, "length": tokens}
        result = {"seed": seed, "aurocs": _aurocs(signals, labels, group_idx, tokens, args.n_boot, seed)}
        accuracy = np.bincount(group_idx, weights=labels) / np.bincount(group_idx)
        loo_mean = np.bincount(group_idx, weights=r) / np.bincount(group_idx)  # a problem's mean reward: its baseline
        result["difficulty_corr_labelled_mean"] = _bootstrap_corr(loo_mean, accuracy, args.n_boot, seed)
        result["between_problem_variance_share"] = {"raw": _between_share(r, group_idx), "contrastive_loo": _between_share(r - loo, group_idx)}
        result["filter"] = {f"{b:.2f}": {name: {"vote_accuracy": _vote(answers[test], labels, keep, group_idx),
                                                 "kept_correct": float(labels[keep].mean())}
                                          for name, keep in (("raw", _budget_threshold(r, tokens, b)),
                                                             ("contrastive_loo", _budget_threshold(r - loo, tokens, b)))}
                            for b in budgets}
        result["filter"]["all"] = _vote(answers[test], labels, np.ones(len(r), bool), group_idx)
        # fresh baselines: k sampled responses per problem, scored by this probe through the API
        fresh_file = fresh_file or _fresh_baselines(ckpt.path, loaded, test_groups, prompts_by_group, work, args)
        rp = RewardProbe(ckpt, loaded, input_spec(ckpt))
        fresh = [json.loads(line) for line in fresh_file.read_text().splitlines()]
        fresh_r = rp.score([f["prompt"] for f in fresh], [f["completion"] for f in fresh]).rewards
        fresh_mean = {g: float(np.mean([x for f, x in zip(fresh, fresh_r) if f["group"] == g])) for g in fresh_groups}
        in_fresh = np.isin(meta.group[test], list(fresh_groups))
        sub_idx = np.unique(meta.group[test][in_fresh], return_inverse=True)[1]
        base = np.asarray([fresh_mean[g] for g in meta.group[test][in_fresh]])
        sub = {"raw": r[in_fresh], "contrastive_loo": (r - loo)[in_fresh], "contrastive_fresh": r[in_fresh] - base, "length": tokens[in_fresh]}
        result["fresh"] = {"n_problems": len(fresh_groups), "k": args.fresh_samples,
                           "aurocs": _aurocs(sub, labels[in_fresh], sub_idx, tokens[in_fresh], args.n_boot, seed),
                           "difficulty_corr": _bootstrap_corr(np.bincount(sub_idx, weights=base) / np.bincount(sub_idx),
                                                              np.bincount(sub_idx, weights=labels[in_fresh]) / np.bincount(sub_idx), args.n_boot, seed),
                           "between_problem_variance_share": {"raw": _between_share(r[in_fresh], sub_idx),
                                                              "contrastive_fresh": _between_share(r[in_fresh] - base, sub_idx)},
                           "sampled_accuracy": float(np.mean([f.get("label") == 1 for f in fresh]))}
        per_seed.append(result)
        console.print(f"seed {seed}: raw {result['aurocs']['raw']['auroc']['value']:.3f}, "
                      f"contrastive (LOO) {result['aurocs']['contrastive_loo']['auroc']['value']:.3f}, "
                      f"fresh {result['fresh']['aurocs']['contrastive_fresh']['auroc']['value']:.3f}")

    summary = _summarise(per_seed, budgets)
    out = {**results_header("contrastive_rewards", machine=machine("cpu", "cpu_count", "torch", "torch_threads", "load_average", "git_commit")),
           "model": args.model, "layer": args.layer, "lam": args.lam,
           "data": {"gsm8k_problems": args.gsm8k_problems, "test_problems": args.test_problems, "fresh_problems": args.fresh_problems,
                    "fresh_samples": args.fresh_samples, "max_new_tokens": args.max_new_tokens},
           "summary": summary, "per_seed": per_seed, "seconds": round(clock.elapsed, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print_stdout(_table(summary, budgets))
    console.print(f"wrote {args.out}")


def _summarise(per_seed: list[dict], budgets: list[float]) -> dict:
    def across(path):
        vals = []
        for r in per_seed:
            v = r
            for k in path:
                v = v[k]
            vals.append(v)
        return mean_ci(vals, bounded=False)

    s = {"auroc": {n: across(["aurocs", n, "auroc", "value"]) for n in SIGNALS},
         "auroc_strat": {n: across(["aurocs", n, "auroc_strat", "value"]) for n in SIGNALS},
         "fresh_auroc": {n: across(["fresh", "aurocs", n, "auroc", "value"]) for n in ("raw", "contrastive_loo", "contrastive_fresh", "length")},
         # paired across seeds: the same probe, split and problems with and without the baseline subtracted
         "paired_gain": {"contrastive_loo - raw": mean_ci([r["aurocs"]["contrastive_loo"]["auroc"]["value"] - r["aurocs"]["raw"]["auroc"]["value"]
                                                          for r in per_seed], bounded=False),
                         "contrastive_fresh - raw (fresh-baseline problems)": mean_ci(
                             [r["fresh"]["aurocs"]["contrastive_fresh"]["auroc"]["value"] - r["fresh"]["aurocs"]["raw"]["auroc"]["value"]
                              for r in per_seed], bounded=False)},
         "shorter_first_auroc": across(["aurocs", "length", "auroc", "value"]) | {"note": "1 - the length row: ranking the shorter solution first"},
         "difficulty_corr_labelled_mean": across(["difficulty_corr_labelled_mean", "value"]),
         "difficulty_corr_fresh": across(["fresh", "difficulty_corr", "value"]),
         "between_problem_variance_share": {n: across(["between_problem_variance_share", n]) for n in ("raw", "contrastive_loo")},
         "fresh_between_problem_variance_share": {n: across(["fresh", "between_problem_variance_share", n]) for n in ("raw", "contrastive_fresh")},
         "fresh_sampled_accuracy": across(["fresh", "sampled_accuracy"]),
         "vote_all": across(["filter", "all"]),
         "filter": {f"{b:.2f}": {n: {"vote_accuracy": across(["filter", f"{b:.2f}", n, "vote_accuracy"]),
                                     "kept_correct": across(["filter", f"{b:.2f}", n, "kept_correct"])} for n in ("raw", "contrastive_loo")}
                    for b in budgets}}
    return s


def _table(s: dict, budgets: list[float]):
    rows = [[f"AUROC {n}", fmt(s["auroc"][n]), fmt(s["auroc_strat"][n])] for n in SIGNALS]
    rows += [[f"AUROC {n} (fresh-baseline problems)", fmt(s["fresh_auroc"][n]), ""] for n in s["fresh_auroc"]]
    rows += [[f"paired gain {n}", fmt(v), ""] for n, v in s["paired_gain"].items()]
    rows += [["corr(problem mean reward, accuracy)", fmt(s["difficulty_corr_labelled_mean"]), ""],
             ["corr(fresh baseline, accuracy)", fmt(s["difficulty_corr_fresh"]), ""]]
    rows += [[f"between-problem variance share {n}", fmt(s["between_problem_variance_share"][n]), ""] for n in ("raw", "contrastive_loo")]
    rows += [[f"between-problem variance share {n} (fresh-baseline problems)", fmt(s["fresh_between_problem_variance_share"][n]), ""]
             for n in ("raw", "contrastive_fresh")]
    rows += [["accuracy of the fresh baseline samples", fmt(s["fresh_sampled_accuracy"]), ""]]
    rows += [["vote accuracy, all solutions", fmt(s["vote_all"]), ""]]
    for b in budgets:
        for n in ("raw", "contrastive_loo"):
            f = s["filter"][f"{b:.2f}"][n]
            rows.append([f"keep {b:.0%} of tokens by {n}: vote / kept correct", fmt(f["vote_accuracy"]), fmt(f["kept_correct"])])
    return table("contrastive rewards on GSM8K (mean [95% t-interval over seeds])", ["measure", "value", "within length strata / kept correct"], rows)


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    main(parser.parse_args())
