"""The demo pipeline end to end, reduced in size, on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

from probekit_cli.tables import demo_table, generation_table
from probekit.config import DemoConfig
from probekit.demo import run_demo
from probekit.models import load_model


def test_demo_pipeline_end_to_end(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    config = DemoConfig(model=str(tiny_model_dir), n_problems=40, epochs=3, n_boot=50, generate_problems=3, generate_tokens=8)
    out = tmp_path / "demo"
    import torch

    threads = torch.get_num_threads()
    summary = run_demo(out, config, loaded=loaded)
    assert torch.get_num_threads() == threads  # the demo's fixed thread count is its own, restored after
    for stage in ("store/manifest.json", "fit-baseline/config.json", "fit-goal/weights.safetensors", "eval-goal/metrics.json",
                  "filter-goal/metrics.json", "filter-baseline/decisions.jsonl", "summary.json"):
        assert (out / stage).exists(), stage
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert [r["probe"].split(" ")[0] for r in summary["rows"]] == ["baseline", "goal-conditioned"]
    for row in summary["rows"]:
        assert 0.0 <= row["auroc"]["value"] <= 1.0
        assert 0.0 <= row["tokens_saved"] <= 1.0
        assert 0.0 <= row["vote_accuracy"] <= 1.0 and 0.0 <= row["vote_accuracy_filtered"] <= 1.0
    # λ = 0 really is the baseline: its config says so, and the goal probe's does not.
    assert json.loads((out / "fit-baseline/config.json").read_text())["fit"]["loss"]["lam"] == 0.0
    assert json.loads((out / "fit-goal/config.json").read_text())["fit"]["loss"]["lam"] == 0.5
    assert any(p.endswith("frontier.png") for p in summary["plots"])
    assert demo_table(summary).row_count >= 2
    # the generation stage sampled new problems plainly and with online stopping by the goal probe, same seeds
    from probekit.data.prompts import read_prompts
    from probekit.store import Store

    gen = summary["generation"]
    prompts, _ = read_prompts(out / "generate-prompts.jsonl")
    plain_store = Store(out / "generate-plain" / "store")
    assert len(prompts) == 3 and len(plain_store) == 3 * config.solutions
    assert gen["plain"]["tokens_generated"] == int(plain_store.meta.completion_tokens.sum()) and gen["plain"]["n_stopped_early"] == 0
    assert gen["filtered"]["tokens_generated"] == json.loads((out / "generate-filtered" / "generation.json").read_text())["tokens_generated"]
    assert gen["tokens_saved"] == 1 - gen["filtered"]["tokens_generated"] / gen["plain"]["tokens_generated"]
    assert gen["threshold"] == summary["rows"][1]["threshold"]
    assert generation_table(gen).row_count == 2
    # decoding time saved is reported beside wall-clock, from the runs' own time split, with the line saying why they differ
    for run in ("plain", "filtered"):
        assert 0 < gen[run]["seconds_decoding"] <= gen[run]["seconds"] and gen[run]["decode_steps"] > 0
    assert gen["decoding_saved"] == 1 - gen["filtered"]["seconds_decoding"] / gen["plain"]["seconds_decoding"]
    assert f"({gen['plain']['decode_steps']} -> {gen['filtered']['decode_steps']};" in gen["why"]
    assert generation_table(gen).legend.startswith("why: stopping saves decoding steps only")
    # every stage's figures, the fits' training curves among them
    assert {Path(p).name for p in summary["plots"]} == {"prefix_auroc.png", "training.png", "frontier.png", "q_curves.png"}
    # A second run resumes the extraction instead of recomputing it.
    shards = sorted((out / "store").glob("shard-*.h5"))
    stamps = [s.stat().st_mtime_ns for s in shards]
    again = run_demo(out, config, loaded=loaded)
    assert [s.stat().st_mtime_ns for s in shards] == stamps
    assert again["rows"][0]["auroc"] == summary["rows"][0]["auroc"]  # same seed, same numbers
