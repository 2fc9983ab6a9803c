"""`probekit data samples`: outside generators' one-record-per-prompt files as trajectories and pairs."""

from __future__ import annotations

import json
import sys

import pytest

from probekit.data.samples import SampleFields, read_samples
from probekit.data.schema import read_pairs, read_trajectories
from probekit.errors import ProbekitError

VLLM_STYLE = [
    {"question": "2+2?", "outputs": [{"text": "It is 4.\n#### 4"}, {"text": "#### 5"}, {"text": "four, i.e. 4"}], "gold": 4, "qid": "q1"},
    {"question": "3*3?", "outputs": [{"text": "#### 9"}, {"text": "#### 6"}], "gold": "9", "qid": "q2"},
]


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_graded_against_gold_with_field_names_as_options(tmp_path):
    fields = SampleFields(prompt_field="question", completions_field="outputs", gold_field="gold", id_field="qid")
    trajs, skipped = read_samples(write(tmp_path / "s.jsonl", VLLM_STYLE), fields)
    assert skipped == 0 and [t.id for t in trajs] == ["q1-0", "q1-1", "q1-2", "q2-0", "q2-1"]
    assert [t.answer for t in trajs] == ["4", "5", "4", "9", "6"] and [t.label for t in trajs] == [1, 0, 1, 1, 0]
    assert {t.group for t in trajs} == {"q1", "q2"} and trajs[3].prompt == "3*3?"


def test_given_answers_and_flags_win_over_parsing_and_gold(tmp_path):
    rec = {"prompt": "p", "completions": ["A: 1", "A: 2"], "answers": ["x", None], "correct": [False, True], "gold": "1"}
    fields = SampleFields(answers_field="answers", correct_field="correct", gold_field="gold", answer_parser="synth")
    trajs, _ = read_samples(write(tmp_path / "s.jsonl", [rec]), fields)
    assert [(t.id, t.answer, t.label) for t in trajs] == [("1-0", "x", 0), ("1-1", None, 1)]  # id: the line number
    unlabelled, _ = read_samples(write(tmp_path / "u.jsonl", [{"prompt": "p", "completions": ["A: 1"]}]), SampleFields(answer_parser="synth"))
    assert unlabelled[0].label is None and unlabelled[0].answer == "1"


@pytest.mark.parametrize("record,reason", [
    ({"prompt": "", "completions": ["a"]}, "field 'prompt'"),
    ({"prompt": "p", "completions": "a"}, "field 'completions'"),
    ({"prompt": "p", "completions": []}, "field 'completions'"),
    ({"prompt": "p", "completions": ["a", " "]}, "completion 2"),
    ({"prompt": "p", "completions": ["a", "b"], "correct": [1]}, "field 'correct' must be a list of 2"),
    ({"prompt": "p", "completions": ["a"], "correct": ["yes"]}, "correctness flag 1"),
])
def test_bad_records_name_file_and_line_or_are_skipped(tmp_path, record, reason):
    good = {"prompt": "p", "completions": ["A: 1"]}
    path = write(tmp_path / "s.jsonl", [good, record])
    fields = SampleFields(correct_field="correct")
    with pytest.raises(ProbekitError, match=rf"s.jsonl:2: .*{reason}"):
        read_samples(path, fields)
    trajs, skipped = read_samples(path, fields, skip_invalid=True)
    assert skipped == 1 and len(trajs) == 1


def test_duplicate_ids_are_refused(tmp_path):
    recs = [{"prompt": "p", "completions": ["a"], "id": "x"}, {"prompt": "q", "completions": ["b"], "id": "x"}]
    with pytest.raises(ProbekitError, match="duplicate id 'x'"):
        read_samples(write(tmp_path / "s.jsonl", recs), SampleFields(id_field="id"))


def test_cli_writes_files_extract_reads(tmp_path, monkeypatch, capsys):
    from probekit_cli.main import main

    src = write(tmp_path / "samples.jsonl", VLLM_STYLE)
    out = tmp_path / "data"
    monkeypatch.setattr(sys, "argv", ["probekit", "data", "samples", str(src), "--out", str(out), "--prompt-field", "question",
                                      "--completions-field", "outputs", "--gold-field", "gold", "--id-field", "qid", "--json"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    summary = json.loads(capsys.readouterr().out)
    assert summary["trajectories"] == 5 and summary["pairs"] == 2 + 1
    trajs, _ = read_trajectories(out / "trajectories.jsonl")
    assert len(read_pairs(out / "pairs.jsonl", trajs)) == 3
    monkeypatch.setattr(sys, "argv", ["probekit", "data", "samples", str(src), "--out", str(tmp_path)])  # the folder holding the input
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "holds the input" in " ".join(capsys.readouterr().err.split())
