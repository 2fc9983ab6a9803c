"""`probekit.integrations.trl.reward_function` as the only reward of a real TRL `GRPOTrainer` on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from probekit.errors import ProbekitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
trl = pytest.importorskip("trl")

PROMPTS = ["Tom has 12 apples and buys 3 more.", "Mia has 5 pears and eats 2."]


@pytest.fixture(scope="module")
def ckpt(tiny_model_dir, tmp_path_factory) -> Path:
    """A chat-template probe fitted on a store extracted from the tiny model (the policy TRL trains below)."""
    from tests.helpers import tiny_chat_probe

    return tiny_chat_probe(tiny_model_dir, tmp_path_factory.mktemp("trl"))


@pytest.fixture(scope="module")
def probe(ckpt):
    from probekit.reward import RewardProbe

    return RewardProbe.load(ckpt, device="cpu")


class Recorder:
    """Passes TRL's calls through to the reward function and keeps what went in and came out."""

    def __init__(self, reward):
        self.reward, self.__name__, self.calls = reward, reward.__name__, []

    def __call__(self, prompts, completions, **kwargs):
        out = self.reward(prompts, completions, **kwargs)
        self.calls.append((prompts, completions, out))
        return out


def _train(tiny_model_dir: Path, reward, rows: list, out: Path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, num_generations=2, max_completion_length=6,
                      logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", seed=0, dataloader_num_workers=0,
                      disable_tqdm=True)
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    return trainer


def _logged_means(trainer, name: str) -> list[float]:
    return [entry[f"rewards/{name}/mean"] for entry in trainer.state.log_history if f"rewards/{name}/mean" in entry]


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_a_two_step_grpo_run_logs_the_probes_rewards(tiny_model_dir, probe, tmp_path, conversational):
    from probekit.integrations.trl import reward_function

    reward = reward_function(probe, name="probe_reward")
    rows = [{"prompt": [{"role": "user", "content": p}] if conversational else p} for p in PROMPTS]
    recorder = Recorder(reward)
    trainer = _train(tiny_model_dir, recorder, rows, tmp_path / "grpo")
    assert len(recorder.calls) == 2
    means = _logged_means(trainer, "probe_reward")
    assert len(means) == 2
    assert any(r is not None for _, _, rewards in recorder.calls for r in rewards)  # the random policy wrote some text
    for (prompts, completions, rewards), mean in zip(recorder.calls, means):
        assert len(rewards) == len(completions) == 2
        if conversational:
            texts = [c[-1]["content"] for c in completions]
            assert all(c[-1]["role"] == "assistant" for c in completions)
        else:
            texts = list(completions)
        scored = [i for i, t in enumerate(texts) if t.strip()]
        assert [i for i, r in enumerate(rewards) if r is not None] == scored  # None exactly for empty completions
        if not scored:
            continue
        if conversational:
            expected = probe.score_messages([[*prompts[i], {"role": "assistant", "content": texts[i]}] for i in scored]).rewards
        else:
            expected = probe.score([prompts[i] for i in scored], [texts[i] for i in scored]).rewards
        np.testing.assert_allclose([rewards[i] for i in scored], expected, rtol=1e-6, atol=1e-6)
        assert mean == pytest.approx(float(np.mean(expected)), rel=1e-5, abs=1e-5)  # what the trainer logged under the name


def test_the_callable_scores_plain_and_conversational_batches_as_the_api(probe):
    from probekit.integrations.trl import DEFAULT_NAME, reward_function

    reward = reward_function(probe)
    assert reward.__name__ == DEFAULT_NAME
    completions = ["Step 1: 12 + 3 = 15. A: 15", "", "A: 3<|im_end|>"]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1]]
    got = reward(prompts=prompts, completions=completions, completion_ids=[[1], [], [2]], trainer_state=None)
    assert got[1] is None and all(isinstance(got[i], float) for i in (0, 2))
    expected = probe.score([prompts[0], prompts[2]], [completions[0], completions[2]]).rewards
    np.testing.assert_allclose([got[0], got[2]], expected, rtol=1e-6)
    convs = reward([[{"role": "user", "content": p}] for p in prompts], [[{"role": "assistant", "content": c}] for c in completions])
    np.testing.assert_allclose([convs[0], convs[2]], [got[0], got[2]], rtol=1e-5, atol=1e-5)  # one user message = the plain prompt
    assert convs[1] is None
    assert reward([], []) == []


def test_with_a_baseline_the_reward_is_contrastive(probe, ckpt, tmp_path):
    from probekit.integrations.trl import reward_function
    from probekit.outputs import claim_output
    from probekit.reward.baseline import baseline_entries, write_baselines

    baseline_texts = ["A: 15", "Step 1: 12 + 3 = 14. A: 14"]
    raw = probe.score([PROMPTS[0]] * 2, baseline_texts)
    with claim_output(tmp_path / "base", "baseline") as out:
        write_baselines(out, probe.checkpoint.fingerprint, baseline_entries(raw.prompt_keys, [PROMPTS[0]] * 2, raw.rewards), "test")
    reward = reward_function(ckpt, baseline=tmp_path / "base", device="cpu")
    plain = reward_function(reward.probe, contrastive=False)
    r, c = plain([PROMPTS[0]], ["A: 15"])[0], reward([PROMPTS[0]], ["A: 15"])[0]
    assert c == pytest.approx(r - float(raw.rewards.mean()), abs=1e-5)
    with pytest.raises(ProbekitError, match="item 1: its prompt has no baseline"):
        reward([PROMPTS[1]], ["A: 3"])


@pytest.mark.parametrize("call,needle", [
    (lambda f: f(["a"], ["b", "c"]), "1 prompts but 2 completions"),
    (lambda f: f(["a"], [["b"]]), "completion 1 is list, not a string"),
    (lambda f: f([[{"role": "user", "content": "a"}]], ["b"]), "conversational completion is a list of messages"),
    (lambda f: f([[{"role": "user", "content": "a"}]], [[{"role": "user", "content": "b"}]]), "must be the assistant's"),
])
def test_bad_batches_are_one_error(probe, call, needle):
    from probekit.integrations.trl import reward_function

    with pytest.raises(ProbekitError, match=needle):
        call(reward_function(probe))


def test_contrastive_without_a_baseline_is_refused(probe):
    from probekit.integrations.trl import reward_function

    with pytest.raises(ProbekitError, match="contrastive=True needs a baseline"):
        reward_function(probe, contrastive=True)
