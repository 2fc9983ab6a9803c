"""`probekit data preferences`: TRL's preference format (plain and conversational, explicit and implicit prompt) as trajectories + pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_cli

USER = {"role": "user", "content": "What color is the sky?"}
BLUE, GREEN = {"role": "assistant", "content": "It is blue."}, {"role": "assistant", "content": "It is green."}
RECORDS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2, "source": "a"},
    {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    {"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN], "margin": 0.5},
    {"chosen": [USER, BLUE], "rejected": [USER, GREEN]},
]


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _convert(monkeypatch, capsys, tmp_path: Path, records: list) -> tuple[list[dict], list[dict]]:
    source = _write(tmp_path / "prefs.jsonl", records)
    code, err = run_cli(monkeypatch, capsys, "data", "preferences", source, "--out", tmp_path / "out")
    assert code == 0, err
    read = lambda name: [json.loads(x) for x in (tmp_path / "out" / name).read_text().splitlines()]  # noqa: E731
    return read("trajectories.jsonl"), read("pairs.jsonl")


def test_the_four_shapes_become_chosen_and_rejected_trajectories_with_one_pair_each(tmp_path, monkeypatch, capsys):
    trajectories, pairs = _convert(monkeypatch, capsys, tmp_path, RECORDS)
    assert [t["id"] for t in trajectories[:2]] == ["pref-0-chosen", "pref-0-rejected"]
    assert [(t["group"], t["label"]) for t in trajectories[:2]] == [("pref-0", 1), ("pref-0", 0)]
    texts = [(t["prompt"], t["completion"]) for t in trajectories]
    assert texts == [("The sky is", " blue."), ("The sky is", " green.")] * 2 + [(USER["content"], "It is blue."), (USER["content"], "It is green.")] * 2
    assert pairs == [{"chosen": f"pref-{i}-chosen", "rejected": f"pref-{i}-rejected", **m}
                     for i, m in enumerate([{"margin": 2.0}, {}, {"margin": 0.5}, {}])]
    assert trajectories[0]["meta"] == {"source": "a"} and "meta" not in trajectories[2]


def test_an_implicit_prompt_is_what_trl_extract_prompt_makes_of_it(tmp_path, monkeypatch, capsys):
    from trl import extract_prompt

    records = [RECORDS[1], RECORDS[3], {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"},
               {"chosen": [{"role": "system", "content": "Be brief."}, USER, BLUE], "rejected": [{"role": "system", "content": "Be brief."}, USER, GREEN]}]
    trajectories, _ = _convert(monkeypatch, capsys, tmp_path, records)
    for record, chosen, rejected in zip(records, trajectories[::2], trajectories[1::2]):
        trl_split = extract_prompt(record)
        if isinstance(record["chosen"], str):
            assert (chosen["prompt"], chosen["completion"], rejected["completion"]) == (trl_split["prompt"], trl_split["chosen"], trl_split["rejected"])
        else:
            assert [chosen["completion"], rejected["completion"]] == [trl_split["chosen"][0]["content"], trl_split["rejected"][0]["content"]]
            prompt = trl_split["prompt"]
            assert chosen["prompt"] == (prompt[0]["content"] if len(prompt) == 1 else "\n\nSystem: Be brief.\n\nHuman: What color is the sky?\n\nAssistant:")
            assert chosen.get("meta", {}).get("prompt_messages") == (prompt if len(prompt) > 1 else None)


def test_the_files_read_back_and_ties_are_skipped_and_counted(tmp_path, monkeypatch, capsys):
    from probekit.data.schema import read_pairs, read_trajectories

    source = _write(tmp_path / "prefs.jsonl", RECORDS[:1] + [{"prompt": "x", "chosen": "same", "rejected": "same"}])
    code, err = run_cli(monkeypatch, capsys, "data", "preferences", source, "--out", tmp_path / "out")
    assert code == 0 and "skipped 1 (identical completions: 1)" in " ".join(err.split()), err
    trajectories, _ = read_trajectories(tmp_path / "out" / "trajectories.jsonl")
    assert [p.margin for p in read_pairs(tmp_path / "out" / "pairs.jsonl", trajectories)] == [2.0]


@pytest.mark.parametrize("record,needle", [
    ({"prompt": "a", "chosen": "b"}, "missing field 'rejected'"),
    ({"prompt": "a", "chosen": "b", "rejected": [GREEN]}, "all be strings or all be message lists"),
    ({"prompt": [USER], "chosen": [USER], "rejected": [GREEN]}, "'chosen' must be one assistant message after the prompt, got a 'user' message"),
    ({"prompt": [USER], "chosen": [BLUE, BLUE], "rejected": [GREEN]}, "got 2 messages"),
    ({"prompt": [USER], "chosen": [{"role": "assistant"}], "rejected": [GREEN]}, "'chosen' message 1 must be an object with string 'role' and 'content'"),
    ({"chosen": [BLUE], "rejected": [GREEN]}, "no prompt"),
    ({"chosen": "Yes.", "rejected": "No."}, "no prompt is implicit"),
    ({"chosen": "The sky", "rejected": "The sky is"}, "share no prompt to split off"),
    ({"prompt": "a", "chosen": " ", "rejected": "c"}, "empty completion"),
    ({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}, "field 'margin' must be a finite number"),
])
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, monkeypatch, capsys, record, needle):
    source = _write(tmp_path / "prefs.jsonl", [RECORDS[0], record])
    code, err = run_cli(monkeypatch, capsys, "data", "preferences", source, "--out", tmp_path / "out")
    assert_one_line_error(code, err, f"{source}:2", needle)
    assert not (tmp_path / "out").exists()


def test_a_file_of_ties_only_is_an_error(tmp_path, monkeypatch, capsys):
    source = _write(tmp_path / "prefs.jsonl", [{"prompt": "x", "chosen": "same", "rejected": "same"}])
    assert_one_line_error(*run_cli(monkeypatch, capsys, "data", "preferences", source, "--out", tmp_path / "out"),
                          "no valid preference records", "identical completions")
