"""What a record's strings and scalars may be, checked once for every reader and every adapter (issue 19, defects 10, 16).

- a gold answer or a given answer is a string or a number: an object or a list is refused with `file:line`, not
  turned into its Python text (which would never equal an answer, so correct samples were labelled 0);
- a JSON string that is not valid text (a lone UTF-16 surrogate, `"\\ud800"`) is refused (or counted with
  `--skip-invalid`) by every JSONL reader with `file:line`, before it can crash a tokenizer or a writer;
- an adapter never writes what the reader refuses (a NUL character in an answer, an empty completion): it
  refuses the record it came from with `file:line`, and an input that yields no record at all is one line, exit 2.

Every test here failed on the code before these checks (commit 904a079).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from probekit.data.samples import SampleFields, read_samples
from probekit.data.schema import Trajectory, read_trajectories, write_trajectories
from probekit.errors import ProbekitError
from tests.helpers import assert_one_line_error, files_under, run_cli

LONE = "\ud800"  # json.dumps writes it as the escape \ud800, which json.loads reads back as this lone surrogate


def lines(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ---- defect 10: a non-scalar gold or answer -------------------------------------------------------------------

@pytest.mark.parametrize("record, needle", [
    ({"prompt": "2+2?", "completions": ["#### 4", "#### 5"], "gold": {"value": 4}}, "field 'gold' must be a string or number, got dict"),
    ({"prompt": "2+2?", "completions": ["#### 4", "#### 5"], "gold": [4]}, "field 'gold' must be a string or number, got list"),
    ({"prompt": "2+2?", "completions": ["#### 4", "#### 5"], "gold": True}, "field 'gold' must be a string or number, got bool"),
    ({"prompt": "2+2?", "completions": ["#### 4", "#### 5"], "answers": ["4", {"a": 5}]}, "answer 2 of field 'answers'"),
])
def test_data_samples_refuses_a_gold_or_answer_that_is_not_a_string_or_number(tmp_path, monkeypatch, capsys, record, needle):
    good = {"prompt": "1+1?", "completions": ["#### 2", "#### 3"], "gold": 2}
    src = lines(tmp_path / "s.jsonl", [good, record])
    code, err = run_cli(monkeypatch, capsys, "data", "samples", src, "--out", tmp_path / "out", "--gold-field", "gold",
                        "--answers-field", "answers")
    assert_one_line_error(code, err, f"{src}:2", needle)
    assert not (tmp_path / "out" / "trajectories.jsonl").exists()
    fields = SampleFields(gold_field="gold", answers_field="answers")
    trajectories, skipped = read_samples(src, fields, skip_invalid=True)  # counted like any other invalid record
    assert skipped == 1 and [(t.answer, t.label) for t in trajectories] == [("2", 1), ("3", 0)]


def test_a_numeric_gold_still_grades_samples(tmp_path):
    src = lines(tmp_path / "s.jsonl", [{"prompt": "2+2?", "completions": ["#### 4", "#### 5"], "gold": 4}])
    trajectories, _ = read_samples(src, SampleFields(gold_field="gold"))
    assert [t.label for t in trajectories] == [1, 0]


def test_the_prompts_and_trajectories_readers_share_the_check(tmp_path):
    from probekit.data.prompts import read_prompts

    with pytest.raises(ProbekitError, match=r"p\.jsonl:1: field 'gold' must be a string or number, got dict"):
        read_prompts(lines(tmp_path / "p.jsonl", [{"id": 1, "prompt": "2+2?", "gold": {"v": 4}}]))
    bad = {"id": "t", "group": "g", "prompt": "2+2?", "completion": "A: 4", "answer": ["4"]}
    with pytest.raises(ProbekitError, match=r"t\.jsonl:1: field 'answer' must be a string or number, got list"):
        read_trajectories(lines(tmp_path / "t.jsonl", [bad]))


# ---- defect 16: strings that are not valid text ----------------------------------------------------------------

def _trajectory(**kw) -> dict:
    return {"id": "t1", "group": "g", "prompt": "2+2?", "completion": "A: 4", "label": 1, **kw}


@pytest.mark.parametrize("bad, field", [
    (_trajectory(prompt="2+2?" + LONE), "field 'prompt'"),
    (_trajectory(meta={"notes": ["fine", "x" + LONE]}), "field 'meta.notes[1]'"),
    (_trajectory(**{"odd" + LONE: 1}), "a field name"),
])
def test_data_check_refuses_or_counts_a_string_that_is_not_text(tmp_path, monkeypatch, capsys, bad, field):
    src = lines(tmp_path / "t.jsonl", [_trajectory(id="t0"), bad])
    code, err = run_cli(monkeypatch, capsys, "data", "check", src)
    assert_one_line_error(code, err, f"{src}:2", field, "not valid text")
    code, err = run_cli(monkeypatch, capsys, "data", "check", src, "--skip-invalid")
    assert code == 0 and "1 trajectories" in err and "skipped 1 (invalid record: 1)" in " ".join(err.split()), err


def test_skip_invalid_counts_a_string_that_is_not_text(tmp_path):
    src = lines(tmp_path / "t.jsonl", [_trajectory(id="t0"), _trajectory(completion="A: 4" + LONE), _trajectory(id="t2")])
    trajectories, skipped = read_trajectories(src, skip_invalid=True)
    assert skipped == 1 and [t.id for t in trajectories] == ["t0", "t2"]
    emoji = lines(tmp_path / "e.jsonl", [_trajectory(completion="A: 4 \U0001F600")])  # a surrogate *pair* is one character
    assert read_trajectories(emoji)[0][0].completion == "A: 4 \U0001F600"


def test_generate_and_the_adapters_refuse_it_with_file_and_line(tmp_path, monkeypatch, capsys, tiny_model_dir):
    prompts = lines(tmp_path / "prompts.jsonl", [{"id": "p0", "prompt": "2+2?"}, {"id": "p1", "prompt": "3+3?" + LONE}])
    code, err = run_cli(monkeypatch, capsys, "generate", prompts, "--out", tmp_path / "gen", "--model", tiny_model_dir,
                        "--template", "raw", "--samples", "1", "--max-new-tokens", "2", "--no-progress")
    assert_one_line_error(code, err, f"{prompts}:2", "field 'prompt'", "not valid text")
    cases = [
        (["samples", lines(tmp_path / "s.jsonl", [{"prompt": "p", "completions": ["A: 1", "A: 2" + LONE]}])], "completions[1]"),
        (["gsm8k-gold", "--input", lines(tmp_path / "gsm8k" / "test.jsonl", [{"question": "q" + LONE, "answer": "#### 1"}])], "question"),
        (["math", "--input", lines(tmp_path / "math" / "test.jsonl", [{"problem": "p", "solution": "\\boxed{1" + LONE + "}"}])], "solution"),
        (["hh", "--input", lines(tmp_path / "hh" / "test.jsonl.gz", [{"chosen": "\n\nHuman: hi\n\nAssistant: yo" + LONE,
                                                                          "rejected": "\n\nHuman: hi\n\nAssistant: no"}])], "chosen"),
    ]
    for k, (args, field) in enumerate(cases):
        src = args[-1]
        code, err = run_cli(monkeypatch, capsys, "data", *args, "--out", tmp_path / f"out{k}")
        assert_one_line_error(code, err, f"{src}:1", field, "not valid text")
        assert not (tmp_path / f"out{k}" / "trajectories.jsonl").exists()


def test_the_jsonl_writer_refuses_a_string_that_is_not_text_and_writes_nothing(tmp_path):
    out = tmp_path / "o" / "trajectories.jsonl"
    with pytest.raises(ProbekitError, match=r"trajectories\.jsonl:2: field 'prompt' is not valid text"):
        write_trajectories(out, [Trajectory("a", "g", "p", "A: 1"), Trajectory("b", "g", "p" + LONE, "A: 1")])
    assert files_under(tmp_path / "o") == []


# ---- defect 16: adapters never write what the reader refuses ----------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["samples", ("s.jsonl", [{"prompt": "p", "completions": ["A: 1", "A: 2"], "answers": ["1", "2\u0000"]}]), "--answers-field", "answers"],
     "field 'answer' contains a NUL character"),
    (["samples", ("s.jsonl", [{"prompt": "p", "completions": ["A: 1\u0000", "A: 2"]}]), "--answer-parser", "regex:A: (.*)"],
     "field 'answer' contains a NUL character"),
    (["math", "--input", ("math/test.jsonl", [{"problem": "p", "solution": "so \\boxed{4\u0000}"}])], "field 'answer' contains a NUL character"),
    (["gsm8k-gold", "--input", ("gsm8k/test.jsonl", [{"question": "q", "answer": "1 + 1 = 2\n#### 2\u0000"}])],
     "field 'answer' contains a NUL character"),
    (["gsm8k-corrupt", "--input", ("gsm8k/train.jsonl", [{"question": "q", "answer": "1 + 1 = <<1+1=2>>2\n#### 2\u0000"}])],
     "field 'answer' contains a NUL character"),
    (["gsm8k", "--solutions", ("gsm8k/sol.jsonl", [{"question": "q", "ground_truth": "#### 2", **{
        k: {"solution": " " if k == "6b_verification" else "A: 2", "is_correct": True}
        for k in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")}}])], "empty completion"),
])
def test_an_adapter_refuses_the_record_whose_trajectory_the_reader_would_refuse(tmp_path, monkeypatch, capsys, args, needle):
    name, records = next(a for a in args if isinstance(a, tuple))
    src = lines(tmp_path / name, records)
    argv = [src if isinstance(a, tuple) else a for a in args]
    code, err = run_cli(monkeypatch, capsys, "data", *argv, "--out", tmp_path / "out")
    assert_one_line_error(code, err, f"{src}:1", needle)
    assert not (tmp_path / "out" / "trajectories.jsonl").exists()


def test_data_samples_skips_and_counts_such_a_record(tmp_path):
    src = lines(tmp_path / "s.jsonl", [{"prompt": "p", "completions": ["A: 1"], "answers": ["1\u0000"]},
                                       {"prompt": "q", "completions": ["A: 2"], "answers": ["2"]}])
    trajectories, skipped = read_samples(src, SampleFields(answers_field="answers"), skip_invalid=True)
    assert skipped == 1 and [t.answer for t in trajectories] == ["2"]


@pytest.mark.parametrize("command, name", [
    ("gsm8k", "gsm8k/example_model_solutions.jsonl"), ("gsm8k-gold", "gsm8k/test.jsonl"), ("gsm8k-corrupt", "gsm8k/train.jsonl"),
    ("math", "math/test.jsonl"), ("hh", "hh_rlhf/harmless-base/test.jsonl.gz"), ("samples", "samples.jsonl"),
])
def test_an_adapter_whose_input_yields_no_records_is_one_line_exit_2(tmp_path, monkeypatch, capsys, command, name):
    src = lines(tmp_path / name, [])
    flag = {"gsm8k": ["--solutions"], "samples": []}.get(command, ["--input"])
    code, err = run_cli(monkeypatch, capsys, "data", command, *flag, src, "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(src), "no valid")
    assert not (tmp_path / "out" / "trajectories.jsonl").exists()


def test_an_adapter_that_skips_every_record_says_why(tmp_path, monkeypatch, capsys):
    src = lines(tmp_path / "gsm8k" / "train.jsonl", [{"question": "q", "answer": "No arithmetic here.\n#### 2"}])
    code, err = run_cli(monkeypatch, capsys, "data", "gsm8k-corrupt", "--input", src, "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(src), "no valid problems (skipped: 1 ")
