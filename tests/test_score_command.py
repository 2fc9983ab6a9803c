"""`probekit score` and `probekit baseline` through the real CLI: every input format, contrastive rewards, the output rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    from tests.helpers import reward_world

    return reward_world(tiny_model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def rp(world):
    from probekit.reward import RewardProbe

    return RewardProbe.load(world.ckpts["last"], device="cpu")


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _no_load_bar(err: str) -> str:
    """stderr without transformers' own weight-loading bar (drawn before probekit's checks; issue 21 keeps it out)."""
    return "\n".join(line for line in err.splitlines() if "Loading weights" not in line)


def _scores(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]


def test_every_input_format_gives_the_apis_rewards(world, rp, tmp_path, monkeypatch, capsys):
    t = world.trajectories[:5]
    expected = rp.score([x.prompt for x in t], [x.completion for x in t]).rewards
    formats = {
        "trajectories": [x.to_record() for x in t],
        "trl-plain": [{"prompt": x.prompt, "completion": x.completion} for x in t],
        "trl-conversational": [{"prompt": [{"role": "user", "content": x.prompt}],
                                "completion": [{"role": "assistant", "content": x.completion + "<|im_end|>"}]} for x in t],
        "messages": [{"messages": [{"role": "user", "content": x.prompt}, {"role": "assistant", "content": x.completion}]} for x in t],
    }
    for name, records in formats.items():
        out = tmp_path / f"out-{name}"
        code, err = run_cli(monkeypatch, capsys, "score", str(_write(tmp_path / f"{name}.jsonl", records)), "--ckpt", str(world.ckpts["last"]),
                            "--out", str(out), "--device", "cpu", "--chunk", "2", "--no-progress")
        assert code == 0, err
        rows = _scores(out)
        np.testing.assert_allclose([r["reward"] for r in rows], expected, rtol=1e-4, atol=1e-4, err_msg=name)
        assert [r["record"] for r in rows] == [1, 2, 3, 4, 5]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["n_records"] == 5 and summary["checkpoint_fingerprint"] and abs(summary["reward"]["mean"] - expected.mean()) < 1e-3


def test_q_rows_hold_per_token_values_and_texts(world, rp, tmp_path, monkeypatch, capsys):
    t = world.trajectories[:2]
    out = tmp_path / "out"
    code, err = run_cli(monkeypatch, capsys, "score", str(_write(tmp_path / "in.jsonl", [x.to_record() for x in t])), "--ckpt",
                        str(world.ckpts["last"]), "--out", str(out), "--device", "cpu", "--q", "--goal", "kmeans", "--no-progress")
    assert code == 0, err
    rows = _scores(out)
    api = rp.score([x.prompt for x in t], [x.completion for x in t], q=True, goal="kmeans")
    for row, q, tokens in zip(rows, api.q, api.tokens):
        np.testing.assert_allclose(row["q"], q, atol=1e-5)
        assert row["tokens"] == tokens and len(row["positions"]) == len(q)


def test_a_bad_record_is_one_line_naming_the_file_and_line(world, tmp_path, monkeypatch, capsys):
    good = {"prompt": "Q", "completion": "A: 1"}
    for record, needle in [({"prompt": "Q"}, "needs 'prompt' and 'completion'"),
                           ({"prompt": "Q", "completion": ["x"]}, "both be strings or both be message lists"),
                           ({"prompt": "Q", "completion": ""}, "zero tokens"),
                           ({"messages": [{"role": "user", "content": "hi"}]}, "must end with the assistant")]:
        path = _write(tmp_path / "bad.jsonl", [good, good, record])
        code, err = run_cli(monkeypatch, capsys, "score", str(path), "--ckpt", str(world.ckpts["last"]), "--out", str(tmp_path / "o"),
                            "--device", "cpu", "--chunk", "2", "--no-progress", "--overwrite")
        assert_one_line_error(code, _no_load_bar(err), f"{path}:3", needle)
        assert "trajectory '1'" not in err  # an item is named by the file's id, not by its place in the chunk
        assert not (tmp_path / "o" / "scores.jsonl").exists()  # nothing half-written is committed


def test_baselines_from_samples_give_contrastive_rewards(world, rp, tmp_path, monkeypatch, capsys):
    """r_CR(x, y) = r(x, y) - mean_j r(x, y_j): one penalty per prompt, no division by a std (Shen et al. 2024)."""
    t = world.trajectories[:9]  # three prompts, three responses each
    samples = _write(tmp_path / "samples.jsonl", [x.to_record() for x in t])
    code, err = run_cli(monkeypatch, capsys, "baseline", "--from-samples", str(samples), "--ckpt", str(world.ckpts["last"]),
                        "--out", str(tmp_path / "base"), "--device", "cpu", "--no-progress")
    assert code == 0, err
    raw = rp.score([x.prompt for x in t], [x.completion for x in t]).rewards
    means = raw.reshape(3, 3).mean(axis=1)
    rows = [json.loads(line) for line in (tmp_path / "base" / "baselines.jsonl").read_text().splitlines()]
    assert [r["k"] for r in rows] == [3, 3, 3]
    np.testing.assert_allclose(sorted(r["mean"] for r in rows), sorted(means), rtol=1e-5, atol=1e-5)
    # the policy's samples: other completions of the same prompts (and one prompt without a baseline)
    policy = [{"prompt": x.prompt, "completion": "Step 1: 2 + 2 = 4. A: 4"} for x in t[::3]]
    code, err = run_cli(monkeypatch, capsys, "score", str(_write(tmp_path / "policy.jsonl", policy)), "--ckpt", str(world.ckpts["last"]),
                        "--baseline", str(tmp_path / "base"), "--out", str(tmp_path / "scored"), "--device", "cpu", "--no-progress")
    assert code == 0, err
    scored = _scores(tmp_path / "scored")
    np.testing.assert_allclose([r["contrastive_reward"] for r in scored], [r["reward"] for r in scored] - means, rtol=1e-4, atol=1e-4)
    missing = _write(tmp_path / "missing.jsonl", [*policy, {"prompt": "A question nobody sampled", "completion": "A: 3"}])
    code, err = run_cli(monkeypatch, capsys, "score", str(missing), "--ckpt", str(world.ckpts["last"]), "--baseline", str(tmp_path / "base"),
                        "--out", str(tmp_path / "scored2"), "--device", "cpu", "--no-progress")
    assert_one_line_error(code, _no_load_bar(err), f"{missing}:4", "has no baseline")
    code, err = run_cli(monkeypatch, capsys, "score", str(missing), "--ckpt", str(world.ckpts["last"]), "--baseline", str(tmp_path / "base"),
                        "--on-missing", "zero", "--out", str(tmp_path / "scored2"), "--device", "cpu", "--no-progress", "--overwrite")
    assert code == 0, err
    last = _scores(tmp_path / "scored2")[-1]
    assert last["has_baseline"] is False and last["contrastive_reward"] == pytest.approx(last["reward"])
    # a baseline scored by another probe is refused before any model loads
    code, err = run_cli(monkeypatch, capsys, "score", str(missing), "--ckpt", str(world.ckpts["mean"]), "--baseline", str(tmp_path / "base"),
                        "--out", str(tmp_path / "scored3"), "--device", "cpu", "--no-progress")
    assert_one_line_error(code, _no_load_bar(err), "scored by another probe")


def test_sampled_baselines_use_generate_and_key_the_rendered_prompt(world, rp, tmp_path, monkeypatch, capsys):
    prompts = _write(tmp_path / "prompts.jsonl", [{"id": "p1", "prompt": world.trajectories[0].prompt}, {"id": "p2", "prompt": "What is 2 + 3?"}])
    code, err = run_cli(monkeypatch, capsys, "baseline", str(prompts), "--ckpt", str(world.ckpts["last"]), "--out", str(tmp_path / "b"),
                        "--samples", "3", "--max-new-tokens", "6", "--device", "cpu", "--no-progress", "--json")
    assert code == 0, err
    samples = [json.loads(line) for line in (tmp_path / "b" / "samples" / "trajectories.jsonl").read_text().splitlines()]
    assert len(samples) == 6
    rows = [json.loads(line) for line in (tmp_path / "b" / "baselines.jsonl").read_text().splitlines()]
    assert [r["k"] for r in rows] == [3, 3]
    first = [s for s in samples if s["group"] == "p1"]
    expected = rp.score([s["prompt"] for s in first], [s["completion"] for s in first]).rewards.mean()
    assert rows[0]["mean"] == pytest.approx(float(expected), abs=1e-4)
    # an OpenRLHF-style rendered prompt finds the same baseline
    from probekit.reward.baseline import read_baselines

    rendered = rp.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False)
    rp2 = type(rp)(rp.checkpoint, rp.loaded, rp.spec, baseline=read_baselines(tmp_path / "b"))
    assert rp2.score([rendered], ["A: 5"], rendered=True).has_baseline.all()


def test_score_refuses_an_out_holding_the_users_files(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = _write(tmp_path / "in.jsonl", [{"prompt": "Q", "completion": "A: 1"}])
    code, err = run_cli(monkeypatch, capsys, "score", str(path), "--ckpt", str(world.ckpts["last"]), "--out", str(out), "--no-progress")
    assert code == 2 and "notes.txt" in err
    assert (out / "notes.txt").read_text() == "mine"


def test_goal_from_examples_needs_no_model_option_with_a_self_describing_checkpoint(world, tmp_path, monkeypatch, capsys):
    examples = _write(tmp_path / "ex.jsonl", [x.to_record() for x in world.trajectories[:3]])
    code, err = run_cli(monkeypatch, capsys, "goal", "--ckpt", str(world.ckpts["last"]), "--from", str(examples), "--name", "mine",
                        "--out", str(tmp_path / "g"))
    assert code == 0, err
    record = json.loads((tmp_path / "g" / "goal.json").read_text())
    assert record["template"] == "chat" and record["n_examples"] == 3  # the checkpoint's template, not auto's guess
