"""GSM8K and HH-RLHF adapters on the real files (counts from ../shared/data/README.md) and on bad input."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from probekit.data.gsm8k import (
    SOLUTION_KEYS,
    gold_completion,
    gold_solutions,
    labelled_solutions,
    normalize_answer,
    strip_annotations,
)
from probekit.data.hh import hh_pairs
from probekit.data.schema import derive_pairs
from probekit.errors import ProbekitError
from probekit.io import iter_jsonl

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def solutions(data_dir):
    return labelled_solutions(data_dir / "gsm8k" / "example_model_solutions.jsonl")


@pytest.mark.parametrize(
    "raw, expected",
    [(" 18", "18"), ("$1,080.", "1080"), (" 7.5\n", "7.5"), ("18.00", "18"), ("-3", "-3"), ("90,", "90"), ("1/5", "1/5"), ("  ", None), (None, None)],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_labelled_solutions_counts(solutions):
    assert len(solutions) == 1319 * 4
    assert len({t.id for t in solutions}) == len(solutions)
    correct = Counter(t.meta["source_key"] for t in solutions if t.label == 1)
    assert [correct[k] for k in SOLUTION_KEYS] == [286, 515, 458, 742]
    by_group = defaultdict(set)
    for t in solutions:
        by_group[t.group].add(t.label)
    assert len(by_group) == 1319
    assert sum(labels == {0, 1} for labels in by_group.values()) == 731
    assert sum(t.answer is None for t in solutions) == 11
    assert all(t.meta["ground_truth"] is not None for t in solutions)
    # Every pair is (correct, incorrect) within one problem.
    by_id = {t.id: t for t in solutions}
    assert all(by_id[p.chosen].label == 1 and by_id[p.rejected].label == 0 for p in derive_pairs(solutions))


def test_labelled_solutions_fields(solutions, data_dir):
    _, first = next(iter_jsonl(data_dir / "gsm8k" / "example_model_solutions.jsonl"))
    t = solutions[0]
    assert (t.id, t.group, t.prompt) == ("0-6b_finetuning", "gsm8k-test-0", first["question"])
    assert t.completion == first["6b_finetuning"]["solution"]
    assert t.label == int(first["6b_finetuning"]["is_correct"]) and t.answer == "26" and t.meta["ground_truth"] == "18"
    # After normalisation the vote decides correctness exactly: "$1,080." and "1080" agree.
    voted = [t for t in solutions if t.answer is not None]
    assert all((t.answer == t.meta["ground_truth"]) == (t.label == 1) for t in voted)


def test_labelled_solutions_strip_calculator(data_dir):
    stripped = labelled_solutions(data_dir / "gsm8k" / "example_model_solutions.jsonl", strip_calculator=True)
    assert not any(re.search(r"<<[^<>]*>>", t.completion) for t in stripped)
    assert sum("<<" in t.completion for t in stripped) <= 11  # only unclosed annotations of truncated solutions


def test_labelled_solutions_bad_line_names_file_and_line(tmp_path):
    record = {"question": "q", "ground_truth": "A: 1", **{k: {"is_correct": True, "solution": "A: 1"} for k in SOLUTION_KEYS}}
    broken = {k: v for k, v in record.items() if k != "175b_verification"}
    path = tmp_path / "sols.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(ProbekitError, match=r"sols\.jsonl:2: field '175b_verification'"):
        labelled_solutions(path)
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "question"}) + "\n")
    with pytest.raises(ProbekitError, match=r"sols\.jsonl:1: missing or non-string field 'question'"):
        labelled_solutions(path)


def test_gold_solutions_test_split(data_dir, solutions):
    gold = gold_solutions(data_dir / "gsm8k" / "test.jsonl")
    assert len(gold) == 1319
    assert gold[0].group == "gsm8k-test-0" and gold[0].label == 1
    assert gold[0].completion == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer’s market.\nA: 18"
    )
    for t in gold:
        assert "<<" not in t.completion and "####" not in t.completion
        assert t.completion.splitlines()[-1].startswith("A: ")
    # Same problems, in the same order, as the labelled file; same normalised answers.
    truth = {t.group: (t.prompt, t.meta["ground_truth"]) for t in solutions}
    assert all(truth[t.group] == (t.prompt, t.answer) for t in gold)


def test_gold_completion_and_errors(tmp_path):
    annotated = "Half is 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 1,072"
    assert gold_completion(annotated) == "Half is 48/2 = 24 clips.\nIn all 48+24 = 72 clips.\nA: 1,072"
    assert strip_annotations("a <<1+1=2>>2") == "a 2"
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": annotated}) + "\n" + json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ProbekitError, match=r"train\.jsonl:2: answer has no '#### <answer>' line"):
        gold_solutions(path)


def test_hh_pairs(data_dir):
    path = data_dir / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"
    raw = [obj for _, obj in iter_jsonl(path)]
    assert len(raw) == 2312
    skipped = Counter()
    trajectories, pairs = hh_pairs(path, skipped)
    assert skipped == Counter({"prompts differ": 5, "empty completion": 4})
    assert len(pairs) == 2312 - 9 and len(trajectories) == 2 * len(pairs)
    by_id = {t.id: t for t in trajectories}
    for p in pairs:
        chosen, rejected = by_id[p.chosen], by_id[p.rejected]
        assert chosen.group == rejected.group and (chosen.label, rejected.label) == (1, 0)
        assert chosen.prompt == rejected.prompt and chosen.prompt.endswith("\n\nAssistant:")
        i = int(chosen.group.split("-")[1])
        for t, key in ((chosen, "chosen"), (rejected, "rejected")):
            assert t.completion.strip() and t.completion == t.completion.lstrip()
            assert raw[i][key].startswith(t.prompt) and raw[i][key].endswith(t.completion)
            assert "\n\nAssistant:" not in t.completion
    assert derive_pairs(trajectories) == pairs


def test_hh_bad_record(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello"}) + "\n")
    with pytest.raises(ProbekitError, match=r"hh\.jsonl:1: missing or non-string field 'rejected'"):
        hh_pairs(path)
    path.write_text(json.dumps({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"}) + "\n")
    with pytest.raises(ProbekitError, match=r"hh\.jsonl:1: 'chosen' has no"):
        hh_pairs(path)


@pytest.mark.parametrize(
    "args, counts",
    [
        (["gsm8k", "--solutions", "gsm8k/example_model_solutions.jsonl"], (5276, 1319, 2429, 0)),
        (["gsm8k-gold", "--input", "gsm8k/test.jsonl"], (1319, 1319, 0, 0)),
        (["hh", "--input", "hh_rlhf/harmless-base/test.jsonl.gz"], (4606, 2303, 2303, 9)),
    ],
)
def test_cli_adapters(tmp_path, data_dir, args, counts):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401  (registers the commands)
    from probekit_cli.app import app

    args = [str(data_dir / a) if "/" in a else a for a in args]
    result = CliRunner().invoke(app, ["data", *args, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["trajectories"], summary["groups"], summary["pairs"], summary["skipped"]) == counts
    check = CliRunner().invoke(app, ["data", "check", str(tmp_path / "trajectories.jsonl"), "--pairs", str(tmp_path / "pairs.jsonl"), "--json"])
    assert json.loads(check.stdout)["pairs"] == counts[2]
