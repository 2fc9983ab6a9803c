"""Steering's guards and step scores on the planted language model of tests/planted_lm.py, whose choices are known
in advance: the searches below must make the choices the options say.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from probekit.errors import ProbekitError
from probekit.models import load_model
from probekit.generate.config import SteerConfig
from probekit.generate.steering import steer
from tests.planted_lm import PROMPTS, TEXTS, gen_config, plant_lm, plant_probe

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def best(result) -> dict[str, object]:
    return {t.group: t for t in result.trajectories if t.meta["rank"] == 0}


# Q: a newline looks like the goal (1.0), the answer's tokens much less (0.2).
FINISHED_LOOKS_BEST = {"OTHER": 0.0, "NL": 1.0, "A": 0.2, "COLON": 0.2, "FIVE": 0.2}


@pytest.fixture(scope="module")
def blank_lines(tiny_model_dir):
    """After the prompt or a newline: a newline or "A"; "A: 5" then ends (EOS)."""
    return plant_lm(tiny_model_dir, {"OTHER": ["NL", "A"], "NL": ["NL", "A"], "A": ["COLON"], "COLON": ["FIVE"], "FIVE": ["EOS"]})


def test_empty_steps_ranked_last_or_resampled_give_the_answer_instead_of_blank_lines(blank_lines, tmp_path):
    """Line steps: a blank line (Q 1.0, not an ending) beats "A: 5" (ends, Q 0.2) unless empty steps are ranked last or redrawn."""
    ckpt = plant_probe(tmp_path / "ck", FINISHED_LOOKS_BEST, blank_lines)
    runs = {mode: steer(PROMPTS, tmp_path / mode, gen_config(), SteerConfig(beams=1, candidates=4, empty_steps=mode), ckpt, loaded=blank_lines)
            for mode in ("allow", "last", "resample")}
    blank = {}
    for mode, r in runs.items():
        tops = list(best(r).values())
        assert all(re.fullmatch(r"\n*(A: 5)?", t.completion) for t in tops)  # blank lines, then the answer unless the limit came first
        blank[mode] = sum(t.completion.count("\n") for t in tops)
    # allow: a blank line is chosen whenever one of the 4 candidates drew it (probability 15/16 per step), up to the 8-token limit
    assert blank["allow"] >= 4 * len(PROMPTS) and runs["allow"].stats["accuracy_best_beam"] <= 0.5, blank
    for mode in ("last", "resample"):  # "A: 5" is chosen whenever a candidate drew it
        assert runs[mode].stats["accuracy_best_beam"] == 1.0 and blank[mode] <= 2, (mode, blank)
    assert runs["last"].stats["resampled_steps"] == 0
    resampled = runs["resample"].stats
    assert resampled["resampled_steps"] > 0 and resampled["tokens_in_resampled_steps"] == resampled["resampled_steps"]  # one newline each


def test_a_redrawn_step_continues_exactly_from_its_beam(blank_lines, tmp_path):
    """The rewound rows' masked cache entries are invisible: the best beam's reported Q is the Q extract + score compute on its tokens."""
    from tests.helpers import extracted_last_q

    ckpt = plant_probe(tmp_path / "ck", FINISHED_LOOKS_BEST, blank_lines)
    res = steer(PROMPTS, tmp_path / "s", gen_config(dtype="float32"), SteerConfig(beams=1, candidates=4, empty_steps="resample"), ckpt,
                loaded=blank_lines)
    assert res.stats["resampled_steps"] > 0
    top = list(best(res).values())
    np.testing.assert_allclose([t.meta["q"] for t in top], extracted_last_q(top, ckpt, blank_lines, tmp_path), atol=1e-5)


@pytest.fixture(scope="module")
def early_end(tiny_model_dir):
    """A blank line after a newline completes the stop string "\\n\\n"; "A: 5" is followed by a newline."""
    return plant_lm(tiny_model_dir, {"OTHER": ["NL", "A"], "NL": ["NL", "A"], "A": ["COLON"], "COLON": ["FIVE"], "FIVE": ["NL"]})


def test_each_step_starts_from_the_logits_of_its_beams_last_token(early_end, tmp_path):
    """Regression: a row that ended its step kept the logits that had predicted its last token, so the next step drew
    that position again ("A: 5 5", a newline after "A: 5\n" that ended the completion). Every token must follow the chain."""
    successors = {"OTHER": {"NL", "A"}, "NL": {"NL", "A"}, "A": {"COLON"}, "COLON": {"FIVE"}, "FIVE": {"NL"}}
    tok = early_end.tokenizer
    name = {tok(text, add_special_tokens=False)["input_ids"][0]: n for n, text in TEXTS.items()}
    ckpt = plant_probe(tmp_path / "ck", FINISHED_LOOKS_BEST, early_end)
    for step_tokens in (0, 1, 3):
        res = steer(PROMPTS, tmp_path / f"s{step_tokens}", gen_config(stop="\n\n", max_new_tokens=10),
                    SteerConfig(beams=1, candidates=1, step_tokens=step_tokens), ckpt, loaded=early_end)
        for t in res.trajectories:
            classes = ["OTHER"] + [name[i] for i in t.meta["completion_token_ids"]]
            assert all(b in successors[a] for a, b in zip(classes, classes[1:])), (step_tokens, t.completion)


def test_an_ending_without_the_required_answer_ranks_below_continuing_candidates(early_end, tmp_path):
    """One-token steps: "\\n\\n" ends at once with the goal's Q (1.0); with --require-before-end the search writes the answer first."""
    ckpt = plant_probe(tmp_path / "ck", FINISHED_LOOKS_BEST, early_end)
    gen = gen_config(stop="\n\n", max_new_tokens=10)
    plain = steer(PROMPTS, tmp_path / "plain", gen, SteerConfig(beams=1, candidates=12, step_tokens=1), ckpt, loaded=early_end)
    # "\n\n" is chosen at step 2 unless all 12 candidates drew "A" (about 1/2 ** 12 per prompt)
    assert sum(t.completion == "\n\n" for t in best(plain).values()) >= len(PROMPTS) - 1
    assert plain.stats["accuracy_best_beam"] <= 1 / len(PROMPTS) and plain.stats["n_best_ended_without_match"] is None
    required = steer(PROMPTS, tmp_path / "req", gen, SteerConfig(beams=1, candidates=12, step_tokens=1, require_before_end=r"A: \d+"), ckpt,
                     loaded=early_end)
    for t in best(required).values():
        assert t.completion == "\nA: 5\n\n" and t.label == 1, t.completion  # it still ends at the stop, after the answer
    assert required.stats["accuracy_best_beam"] == 1.0 and required.stats["n_best_ended_without_match"] == 0
    assert json.loads((tmp_path / "req" / "steering.json").read_text())["config"]["require_before_end"] == r"A: \d+"


def test_mean_step_score_ranks_a_step_by_the_cosine_of_its_mean_phi(tiny_model_dir, tmp_path):
    """Two-token steps "\\nA" and "A:": the last token prefers "A:" (0.3 > -0.2), the step's mean φ prefers "\\nA" (0.63 > 0.05)."""
    lm = plant_lm(tiny_model_dir, {"OTHER": ["NL", "A"], "NL": ["A"], "A": ["COLON"], "COLON": ["FIVE"], "FIVE": ["EOS"]})
    q = {"OTHER": 0.0, "NL": 1.0, "A": -0.2, "COLON": 0.3}
    ckpt = plant_probe(tmp_path / "ck", q, lm)
    phi = {k: np.array([v, math.sqrt(1 - v * v)]) for k, v in q.items()}
    cos = {"\nA": phi["NL"] + phi["A"], "A:": phi["A"] + phi["COLON"]}
    cos = {k: float(v[0] / np.linalg.norm(v)) for k, v in cos.items()}
    assert cos["\nA"] > 0.6 and cos["A:"] < 0.1
    runs = {kind: steer(PROMPTS, tmp_path / kind, gen_config(max_new_tokens=2), SteerConfig(beams=4, candidates=4, step_tokens=2, step_score=kind),
                        ckpt, loaded=lm) for kind in ("last", "mean")}
    both = 0
    for p in PROMPTS:
        finals = {kind: [t for t in r.trajectories if t.group == p.id] for kind, r in runs.items()}
        assert sorted(t.completion for t in finals["last"]) == sorted(t.completion for t in finals["mean"])  # same draws, other order
        if len({t.completion for t in finals["last"]}) < 2:
            continue
        both += 1
        assert finals["last"][0].completion == "A:" and finals["mean"][0].completion == "\nA"
        for t in finals["mean"]:
            assert t.meta["score"] == pytest.approx(cos[t.completion], abs=0.03)
        for t in finals["last"]:
            assert t.meta["score"] == t.meta["q"] == pytest.approx(q["A" if t.completion == "\nA" else "COLON"], abs=0.03)
    assert both >= 3


def test_gain_step_score_ranks_by_the_rise_of_q_over_the_beams_previous_step(tiny_model_dir, tmp_path):
    """Beams "\\n" (Q 1.0) and ":" (Q -0.5) each take one token: "\\nA" ends higher (0.5 vs 0.3), ": 5" rises more (+0.8 vs -0.5)."""
    lm = plant_lm(tiny_model_dir, {"OTHER": ["NL", "COLON"], "NL": ["A"], "COLON": ["FIVE"], "A": ["EOS"], "FIVE": ["EOS"]})
    ckpt = plant_probe(tmp_path / "ck", {"OTHER": 0.0, "NL": 1.0, "COLON": -0.5, "A": 0.5, "FIVE": 0.3}, lm)
    search = SteerConfig(beams=2, candidates=2, step_tokens=1)
    first = steer(PROMPTS, tmp_path / "first", gen_config(max_new_tokens=1), search, ckpt, loaded=lm)  # the same first step's beams
    runs = {kind: steer(PROMPTS, tmp_path / kind, gen_config(max_new_tokens=2), SteerConfig(beams=2, candidates=2, step_tokens=1, step_score=kind),
                        ckpt, loaded=lm) for kind in ("last", "gain")}
    mixed = 0
    for p in PROMPTS:
        beams = {t.completion for t in first.trajectories if t.group == p.id}
        top = {kind: best(r)[p.id] for kind, r in runs.items()}
        if beams == {"\n", ":"}:
            mixed += 1
            assert top["last"].completion == "\nA" and top["last"].meta["score"] == pytest.approx(0.5, abs=0.03)
            assert top["gain"].completion == ": 5" and top["gain"].meta["score"] == pytest.approx(0.8, abs=0.05)
        else:  # one parent: a gain orders its children as their Q does
            assert top["last"].completion == top["gain"].completion
    assert mixed >= 2


def test_bad_steer_options_are_one_line_errors(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from tests.helpers import assert_one_line_error, run_cli

    for cfg, needle in ((SteerConfig(step_score="best"), "--step-score 'best'"), (SteerConfig(empty_steps="drop"), "--empty-steps 'drop'"),
                        (SteerConfig(max_resamples=0), "--max-resamples 0"), (SteerConfig(require_before_end="A: ("), "--require-before-end")):
        with pytest.raises(ProbekitError, match=needle.replace("(", r"\(")):
            cfg.validate()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Question: 2 + 3?", "gold": "5"}\n')
    code, err = run_cli(monkeypatch, capsys, "steer", prompts, "--ckpt", tmp_path / "none", "--out", tmp_path / "o", "--model", tiny_model_dir,
                        "--require-before-end", "A: (", "--no-progress")
    assert_one_line_error(code, err, "--require-before-end 'A: ('", "not a regular expression")
    assert not (tmp_path / "o").exists()


def test_search_options_reach_the_search_through_the_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The options are derived from SteerConfig: given on the command line, they are what steering.json records."""
    from tests.helpers import run_cli

    ckpt = plant_probe(tmp_path / "ck", FINISHED_LOOKS_BEST, load_model(str(tiny_model_dir), device="cpu"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Question: 2 + 3?", "gold": "5"}\n')
    code, err = run_cli(monkeypatch, capsys, "steer", prompts, "--ckpt", ckpt.path, "--out", tmp_path / "o", "--model", tiny_model_dir,
                        "--template", "raw", "--max-new-tokens", "6", "--step-tokens", "2", "--step-score", "gain", "--empty-steps", "resample",
                        "--max-resamples", "2", "--require-before-end", r"A: \d", "--no-progress")
    assert code == 0, err
    stats = json.loads((tmp_path / "o" / "steering.json").read_text())
    assert {k: stats["config"][k] for k in ("step_score", "empty_steps", "max_resamples", "require_before_end")} == {
        "step_score": "gain", "empty_steps": "resample", "max_resamples": 2, "require_before_end": r"A: \d"}
    assert stats["n_best_ended_without_match"] in (0, 1) and stats["tokens_generated"] >= 6
