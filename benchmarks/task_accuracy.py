"""Which task can the bundled model do? Per-sample accuracy of `probekit generate` on candidate tasks.

Generation experiments (online filtering, steering) need a task where the
frozen model is right on some samples and wrong on others (20-80 % per
sample): at 0 % or 100 % there is nothing to filter or steer. This samples
synthetic word problems of 1 or 2 steps, zero- and few-shot, with the chat
template and raw, and records per-sample accuracy with a 95 % bootstrap
interval over problems (samples of one problem are correlated), majority-vote
accuracy, and tokens/s.

    python benchmarks/task_accuracy.py [--n-problems 40 --samples 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Clock, console, machine_line, results_header, table  # noqa: E402
from probekit.io import write_json  # noqa: E402

CONFIGS = [  # (name, min steps, max steps, shots, template)
    ("1-step zero-shot chat", 1, 1, 0, "chat"),
    ("1-step 2-shot chat", 1, 1, 2, "chat"),
    ("1-step 2-shot raw", 1, 1, 2, "raw"),
    ("2-step 2-shot chat", 2, 2, 2, "chat"),
    ("2-step 2-shot raw", 2, 2, 2, "raw"),
]


def measure(loaded, name: str, lo: int, hi: int, shots: int, template: str, args) -> dict:
    from probekit.data.synth import synth_prompts
    from probekit.generate.config import GenerateConfig
    from probekit.generate.generation import generate
    from probekit.metrics import bootstrap_counts, percentile_interval
    from probekit.filter.voting import Ballot, accuracy

    prompts = synth_prompts(args.n_problems, lo, hi, shots, seed=args.seed)
    cfg = GenerateConfig(samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95, seed=args.seed,
                         template=template, answer="synth", stop="\n\n", batch_size=32)
    with Clock() as clock:
        res = generate(prompts, Path(args.work) / name.replace(" ", "_"), cfg, loaded=loaded, overwrite=True)
    seconds = clock.seconds
    trajs = res.trajectories
    labels = np.array([t.label for t in trajs], dtype=float)
    groups = np.repeat(np.arange(len(prompts)), args.samples)
    counts = bootstrap_counts(len(prompts), 2000, args.seed)
    per_group = np.bincount(groups, weights=labels, minlength=len(prompts))
    lo_ci, hi_ci = percentile_interval((counts @ per_group) / (counts.sum(1) * args.samples))
    ballot = Ballot([t.group for t in trajs], [t.answer for t in trajs], labels.astype(int), require_answers=False)
    return {"config": name, "steps": [lo, hi], "shots": shots, "template": template, "n_problems": len(prompts), "samples": args.samples,
            "accuracy_per_sample": float(labels.mean()), "ci95": [lo_ci, hi_ci],
            "majority_vote_accuracy": accuracy(ballot.vote()), "oracle_accuracy": float(ballot.group_has_correct.mean()),
            "no_answer_share": float(np.mean([t.answer is None for t in trajs])),
            "mean_tokens": float(np.mean([t.meta["tokens"] for t in trajs])), "hit_max_new_tokens": res.stats["n_hit_max_new_tokens"],
            "tokens_per_second": round(res.stats["tokens_generated"] / seconds, 1), "seconds": round(seconds, 1),
            "example": trajs[0].completion}


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n-problems", type=int, default=40)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--work", default="runs/task-accuracy")
    ap.add_argument("--out", default="benchmarks/results/task_accuracy.json")


def main(args) -> int:
    from probekit.models import load_model

    loaded = load_model(args.model, device="cpu")
    rows = []
    for name, lo, hi, shots, template in CONFIGS:
        console.log(f"{name}: {args.n_problems} problems x {args.samples} samples")
        rows.append(measure(loaded, name, lo, hi, shots, template, args))
        r = rows[-1]
        console.log(f"  accuracy {r['accuracy_per_sample']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], {r['tokens_per_second']} tok/s")
    result = {**results_header(exact_command=False, day_only=True, machine=machine_line(shared=False)), "model": args.model,
              "sampling": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": args.max_new_tokens, "stop": "\\n\\n", "answer": "synth"},
              "tasks": rows}
    write_json(args.out, result)
    console.print(table("Per-sample accuracy of the bundled model (95% bootstrap CI over problems)",
                        ["task", "accuracy", "95% CI", "vote acc", "no answer", "tokens", "tok/s"],
                        [[r["config"], r["accuracy_per_sample"], f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]", r["majority_vote_accuracy"],
                          r["no_answer_share"], r["mean_tokens"], r["tokens_per_second"]] for r in rows]))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
