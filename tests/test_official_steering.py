"""`steer --step-score official`: the official code's step score, self-evaluation and beam selection.

The formulas are checked on fixed numbers against their direct computation;
the search on the planted bigram model of tests/test_steering.py, where each
branching token has probability exactly 1/2 under top-p 0.95, so every path's
probability is known in advance.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from probekit.errors import ProbekitError
from probekit.extract.render import COMPLETION_IDS
from probekit.generate import official_score as off
from probekit.generate.config import SteerConfig
from probekit.generate.self_eval import DEFAULT_PROMPT, choice_ids, confidence, fill, read_prompt
from probekit.generate.steering import steer
from probekit.models import load_model
from tests.planted_lm import PROMPTS, gen_config, plant_lm, plant_probe

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

Q_FLAT = {"OTHER": 0.0, "NL": 0.5, "A": 0.5, "COLON": 0.5, "FIVE": 0.5}


@pytest.fixture(scope="module")
def branching(tiny_model_dir):
    """After the prompt or a newline: a newline or "A" (1/2 each); "A: 5" then ends."""
    return plant_lm(tiny_model_dir, {"OTHER": ["NL", "A"], "NL": ["NL", "A"], "A": ["COLON"], "COLON": ["FIVE"], "FIVE": ["EOS"]})


def test_the_official_formulas_on_fixed_numbers():
    # get_cp_ratio: the official --conf_ratio is a log2-odds
    assert off.conf_weight(0.0) == 0.5 and off.conf_weight(1.0) == pytest.approx(2 / 3) and off.conf_weight(-2.0) == pytest.approx(0.2)
    assert off.conf_weight(math.inf) == 1.0 and off.conf_weight(-math.inf) == 0.0
    # cal_score: c^r * (p^(1/len))^(1-r)
    for c, p, n, w in ((0.8, 0.2, 4, 0.5), (0.3, 0.9, 1, 0.2), (1.0, 0.05, 10, 0.0), (0.6, 0.5, 0, 0.7)):
        assert off.step_score(c, math.log(p), n, w) == pytest.approx(c ** w * (p ** (1 / max(1, n))) ** (1 - w), rel=1e-12)
    # the path's geometric mean of its step scores
    steps = [0.9, 0.4, 0.7]
    assert off.path_score(sum(map(math.log, steps)), 3) == pytest.approx((0.9 * 0.4 * 0.7) ** (1 / 3), rel=1e-12)
    # calculate_temperature: T at step 0, T * decay^s after; a negative decay is none
    assert off.temperature_at(0.8, 0.5, 0) == 0.8 and off.temperature_at(0.8, 0.5, 3) == pytest.approx(0.1)
    assert off.temperature_at(0.8, -1.0, 3) == 0.8
    cfg = SteerConfig(step_score="official", self_eval=True, conf_ratio=1.0)
    assert cfg.confidence_weight() == pytest.approx(2 / 3)
    assert SteerConfig(step_score="official").confidence_weight() == 0.0  # no self-evaluation: --not_use_conf


def test_top_k_keeps_one_candidate_of_each_text_best_first():
    scores = np.array([0.5, 0.9, 0.9, 0.2, 0.7])
    groups = np.array([0, 1, 1, 2, 3])  # rows 1 and 2 are the same text
    assert off.select(scores, 3) == [1, 2, 4]
    assert off.select(scores, 3, groups=groups) == [1, 4, 0]
    assert off.select(scores, 9, groups=groups) == [1, 4, 0, 3]


def _frequencies(seed: int, draws: int, **kw) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros(3)
    for _ in range(draws):
        (i,) = off.select(np.array([0.2, 0.4, 0.8]), 1, temperature=0.5, rng=rng, **kw)
        counts[i] += 1
    return counts / draws


def test_stochastic_selection_is_reproducible_and_draws_the_official_distributions():
    """Weights score^(1/T) (T = 0.5: score²); unbiased divides by the LM probability; rejection keeps a draw with prob `latest`."""
    scores = np.array([0.2, 0.4, 0.8, 0.6, 0.3])
    a = off.select(scores, 3, temperature=0.7, rng=np.random.default_rng(7))
    assert a == off.select(scores, 3, temperature=0.7, rng=np.random.default_rng(7)) and len(set(a)) == 3
    assert {tuple(off.select(scores, 3, temperature=0.7, rng=np.random.default_rng(s))) for s in range(20)} != {tuple(a)}
    n = 20_000  # a frequency is within 0.011 of its probability (3.5 sigma at worst)
    plain = np.array([0.04, 0.16, 0.64]) / 0.84
    assert np.abs(_frequencies(0, n) - plain).max() < 0.011
    lm = np.array([0.5, 0.25, 1.0])
    unbiased = plain / lm / (plain / lm).sum()
    assert np.abs(_frequencies(1, n, unbiased=True, lm_prob=lm) - unbiased).max() < 0.011
    latest = np.array([1.0, 0.5, 0.1])  # accepted with these probabilities, all above min(min_score, threshold)
    rejected = plain * latest / (plain * latest).sum()
    assert np.abs(_frequencies(2, n, reject=True, latest=latest, min_score=0.1) - rejected).max() < 0.011
    # a candidate at or below min(min_score, k-th best - 1e-5) is never kept; nothing kept: the best is
    assert off.select(np.array([0.05, 0.5]), 1, temperature=1.0, reject=True, latest=np.array([1.0, 0.0]), min_score=0.1,
                      rng=np.random.default_rng(0)) == [1]


def test_self_evaluation_confidence_is_the_softmax_over_the_two_choice_tokens(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    a, b = choice_ids(loaded.tokenizer)
    texts = [fill(DEFAULT_PROMPT, "Question: 2 + 3?", steps) for steps in ("2 + 3 = 5.\n", "2 + 3 = 6", "A")]
    got = confidence(loaded, texts, batch_size=2)  # left-padded batches
    for text, c in zip(texts, got):
        ids = torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits[0, -1].double()
        assert c == pytest.approx(float(torch.softmax(logits[[a, b]], 0)[0]), abs=1e-5)
    assert len(set(np.round(got, 6))) == 3  # the step changes the judgement


def test_official_path_scores_are_geometric_means_of_length_normalised_step_probabilities(branching, tmp_path):
    """Every step starts at a branch (p 1/2): a step of n tokens scores 0.5^(1/n), the path their geometric mean.

    Three of the six prompts: the formula is checked on every finished path of each."""
    ckpt = plant_probe(tmp_path / "ck", Q_FLAT, branching)
    prompts = PROMPTS[:3]
    res = steer(prompts, tmp_path / "o", gen_config(), SteerConfig(beams=3, candidates=3, step_score="official", q_weight=0.0), ckpt,
                loaded=branching)
    assert {t.group for t in res.trajectories} == {p.id for p in prompts}
    for p in prompts:
        finals = [t for t in res.trajectories if t.group == p.id]
        for t in finals:
            steps = [s for s in t.completion.replace("\n", "\n|").split("|") if s]
            n_tok = [len(branching.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in steps]
            assert sum(n_tok) == len(t.meta[COMPLETION_IDS]) and t.meta["steps"] == len(steps)
            expected = math.prod(0.5 ** (1 / n) for n in n_tok) ** (1 / len(steps))
            assert t.meta["path_score"] == pytest.approx(expected, abs=1e-3)
            assert t.meta["lm_prob"] == pytest.approx(0.5 ** (len(steps) / sum(n_tok)), abs=1e-3)
        assert [t.meta["score"] for t in finals] == sorted((t.meta["score"] for t in finals), reverse=True)


def test_unique_candidates_keep_distinct_texts_and_stochastic_selection_repeats_with_its_seed(branching, tmp_path):
    ckpt = plant_probe(tmp_path / "ck", Q_FLAT, branching)
    gen = gen_config(max_new_tokens=3)

    def finals(name: str, **kw) -> dict[str, list[str]]:
        res = steer(PROMPTS, tmp_path / name, gen, SteerConfig(beams=4, candidates=4, step_tokens=1, **kw), ckpt, loaded=branching)
        return {p.id: [t.completion for t in res.trajectories if t.group == p.id] for p in PROMPTS}

    plain, unique = finals("plain"), finals("unique", unique_candidates=True)
    assert any(len(set(v)) < len(v) for v in plain.values())  # four draws of two tokens repeat
    assert all(len(set(v)) == len(v) for v in unique.values())
    assert sum(map(len, unique.values())) > len(PROMPTS)
    drawn = dict(step_score="official", unique_candidates=True, bs_temperature=0.5, bs_temperature_decay=0.9, reject_sample=True, unbiased=True)
    first, again = finals("s1", **drawn), finals("s2", **drawn)
    assert first == again and all(len(set(v)) == len(v) for v in first.values())


def test_self_evaluation_confidence_multiplies_along_the_path(tiny_model_dir, tmp_path):
    """One beam, one candidate, two-token steps: the path's confidence is the product of c on each prefix, judged as `confidence` does."""
    loaded = load_model(str(tiny_model_dir), device="cpu")
    ckpt = plant_probe(tmp_path / "ck", {"OTHER": 0.0}, loaded)
    res = steer(PROMPTS[:2], tmp_path / "o", gen_config(model="tiny", max_new_tokens=6), SteerConfig(
        beams=1, candidates=1, step_tokens=2, step_score="official", self_eval=True, conf_ratio=1.0), ckpt, loaded=loaded)
    for p in PROMPTS[:2]:
        (t,) = [t for t in res.trajectories if t.group == p.id]
        ids = t.meta[COMPLETION_IDS]
        prefixes = [loaded.tokenizer.decode(ids[:end], skip_special_tokens=True) for end in range(2, len(ids) + 2, 2)]
        c = confidence(loaded, [fill(DEFAULT_PROMPT, p.prompt, s) for s in prefixes])
        assert t.meta["confidence"] == pytest.approx(float(np.prod(c)), rel=1e-4)
    assert json.loads((tmp_path / "o" / "steering.json").read_text())["config"]["conf_ratio"] == 1.0


def test_official_options_are_refused_where_they_are_not_read(tmp_path, monkeypatch, capsys, tiny_model_dir):
    from tests.helpers import assert_one_line_error, run_cli

    for kw, needle in (({"bs_temperature": 0.5}, "--bs-temperature is read only with --step-score official"),
                       ({"self_eval": True}, "--self-eval is read only"),
                       ({"step_score": "official", "conf_ratio": 1.0}, "--conf-ratio is read only with --self-eval"),
                       ({"step_score": "official", "reject_sample": True}, "--reject-sample is read only with --bs-temperature"),
                       ({"step_score": "official", "bs_temperature": -1.0}, "--bs-temperature -1.0"),
                       ({"step_score": "official", "q_weight": math.nan}, "--q-weight nan")):
        with pytest.raises(ProbekitError, match=needle):
            SteerConfig(**kw).validate()
    bad = tmp_path / "judge.txt"
    bad.write_text("Is this right? {steps} (")
    with pytest.raises(ProbekitError, match="judge.txt: the self-evaluation prompt lacks the placeholder {prompt}"):
        read_prompt(str(bad))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Question: 2 + 3?", "gold": "5"}\n')
    code, err = run_cli(monkeypatch, capsys, "steer", prompts, "--ckpt", tmp_path / "none", "--out", tmp_path / "o", "--model", tiny_model_dir,
                        "--unbiased", "--no-progress")
    assert_one_line_error(code, err, "--unbiased is read only with --bs-temperature above 0")
    assert not (tmp_path / "o").exists()


def test_official_options_reach_the_search_through_the_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from tests.helpers import run_cli

    ckpt = plant_probe(tmp_path / "ck", {"OTHER": 0.0}, load_model(str(tiny_model_dir), device="cpu"))
    judge = tmp_path / "judge.txt"
    judge.write_text("Q: {prompt}\nA: {steps}\nIs that right? (A) yes (B) no. Answer: (")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Question: 2 + 3?", "gold": "5"}\n')
    code, err = run_cli(monkeypatch, capsys, "steer", prompts, "--ckpt", ckpt.path, "--out", tmp_path / "o", "--model", tiny_model_dir,
                        "--template", "raw", "--max-new-tokens", "4", "--step-tokens", "2", "--beams", "2", "--candidates", "2",
                        "--step-score", "official", "--self-eval", "--self-eval-prompt", judge, "--conf-ratio", "-1", "--q-weight", "0.5",
                        "--unique-candidates", "--bs-temperature", "0.8", "--bs-temperature-decay", "0.5", "--reject-sample", "--unbiased",
                        "--bs-min-score", "0.3", "--no-progress")
    assert code == 0, err
    cfg = json.loads((tmp_path / "o" / "steering.json").read_text())["config"]
    assert {k: cfg[k] for k in ("step_score", "self_eval", "self_eval_prompt", "conf_ratio", "q_weight", "unique_candidates", "bs_temperature",
                                "bs_temperature_decay", "reject_sample", "unbiased", "bs_min_score")} == {
        "step_score": "official", "self_eval": True, "self_eval_prompt": str(judge), "conf_ratio": -1.0, "q_weight": 0.5,
        "unique_candidates": True, "bs_temperature": 0.8, "bs_temperature_decay": 0.5, "reject_sample": True, "unbiased": True,
        "bs_min_score": 0.3}
    assert judge.read_text().startswith("Q: {prompt}")  # an input, never written


def test_the_self_evaluation_prompt_file_is_an_input(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """An --out holding the prompt file is refused and the file kept; a prompt file without its placeholders, or one that
    is missing, is one line naming it."""
    from tests.helpers import assert_one_line_error, run_cli

    ckpt = plant_probe(tmp_path / "ck", {"OTHER": 0.0}, load_model(str(tiny_model_dir), device="cpu"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Question: 2 + 3?", "gold": "5"}\n')
    held = tmp_path / "held"
    held.mkdir()
    judge = held / "judge.txt"
    judge.write_text("Q: {prompt}\nA: {steps}\nRight? (A) yes (B) no. Answer: (")
    no_steps = tmp_path / "no-steps.txt"
    no_steps.write_text("Q: {prompt}\nRight? (A) yes (B) no. Answer: (")

    def steer(judge_file, out):
        return run_cli(monkeypatch, capsys, "steer", prompts, "--ckpt", ckpt.path, "--out", out, "--model", tiny_model_dir,
                       "--template", "raw", "--max-new-tokens", "4", "--step-tokens", "2", "--beams", "2", "--candidates", "2",
                       "--step-score", "official", "--self-eval", "--self-eval-prompt", judge_file, "--no-progress")

    code, err = steer(judge, held)
    assert_one_line_error(code, err, str(held))
    assert sorted(p.name for p in held.iterdir()) == ["judge.txt"] and judge.read_text().startswith("Q: {prompt}")
    for bad in (no_steps, tmp_path / "missing.txt"):
        code, err = steer(bad, tmp_path / "o")
        assert_one_line_error(code, err, str(bad))
