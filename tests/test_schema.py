"""The trajectory/pair readers: every bad record fails with its file and line (or is counted with --skip-invalid)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from probekit.data.schema import Pair, Trajectory, derive_pairs, read_pairs, read_trajectories, write_pairs, write_trajectories
from probekit.errors import ProbekitError

ROOT = Path(__file__).resolve().parents[1]


def good(i: int, group: str = "g0", label: int | None = 1) -> dict:
    rec = {"id": f"t{i}", "group": group, "prompt": "What is 2 + 2?", "completion": f"2 + 2 = 4. A: 4 ({i})"}
    if label is not None:
        rec["label"] = label
    return rec


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "t1", "group": "g0", "prompt": "p", ', "malformed JSON"),
        ({"id": "t1", "prompt": "p", "completion": "c"}, "missing field 'group'"),
        ({"id": "t1", "group": "g0", "prompt": "p", "completion": "   "}, "empty completion"),
        ({**good(1), "label": 2}, "'label' must be 0, 1 or absent"),
        ({**good(1), "label": "yes"}, "'label' must be 0, 1 or absent"),
        ({**good(1), "error_char": 10_000}, "error_char"),
        ({**good(1), "meta": [1, 2]}, "'meta' must be an object"),
        ('[1, 2]', "expected a JSON object"),
    ],
)
def test_bad_trajectory_names_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "trajs.jsonl", [good(0), "", bad, good(2)])
    with pytest.raises(ProbekitError) as err:
        read_trajectories(path)
    assert "trajs.jsonl:3" in str(err.value)
    assert message in str(err.value)


def test_duplicate_ids_fail_even_with_skip_invalid(tmp_path):
    path = write_lines(tmp_path / "dups.jsonl", [good(0), good(1), good(0)])
    for skip in (False, True):
        with pytest.raises(ProbekitError, match=r"dups\.jsonl:3: duplicate id 't0' \(first seen on line 1\)"):
            read_trajectories(path, skip_invalid=skip)


def test_skip_invalid_counts_skipped_records(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [good(0), {**good(1), "label": 5}, good(2), {"id": "x"}, good(3, label=0)])
    with pytest.raises(ProbekitError, match=r"mixed\.jsonl:2"):
        read_trajectories(path)
    trajectories, skipped = read_trajectories(path, skip_invalid=True)
    assert [t.id for t in trajectories] == ["t0", "t2", "t3"]
    assert skipped == 2


def test_no_valid_records_is_an_error(tmp_path):
    path = write_lines(tmp_path / "none.jsonl", [{"id": "x"}])
    with pytest.raises(ProbekitError, match="none.jsonl: no valid trajectories"):
        read_trajectories(path, skip_invalid=True)


def test_round_trip_keeps_fields_and_moves_unknown_keys_into_meta(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [{**good(0), "answer": 4, "error_char": 3, "meta": {"a": 1}, "source": "x"}, good(1, label=None)])
    trajectories, _ = read_trajectories(path)
    assert trajectories[0] == Trajectory("t0", "g0", "What is 2 + 2?", good(0)["completion"], 1, "4", 3, {"a": 1, "source": "x"})
    assert trajectories[1].label is None
    write_trajectories(tmp_path / "again.jsonl", trajectories)
    assert read_trajectories(tmp_path / "again.jsonl")[0] == trajectories


def test_pairs_with_unknown_id_or_across_groups_fail(tmp_path):
    trajectories, _ = read_trajectories(write_lines(tmp_path / "t.jsonl", [good(0), good(1, label=0), good(2, group="g1", label=0)]))
    ok = write_lines(tmp_path / "ok.jsonl", [{"chosen": "t0", "rejected": "t1"}])
    assert read_pairs(ok, trajectories) == [Pair("t0", "t1")]
    cases = [
        ({"chosen": "t0", "rejected": "nope"}, "unknown trajectory id 'nope'"),
        ({"chosen": "t0"}, "missing field 'rejected'"),
        ({"chosen": "t0", "rejected": "t2"}, "spans two groups"),
        ({"chosen": "t0", "rejected": "t0"}, "two different trajectories"),
    ]
    for bad, message in cases:
        path = write_lines(tmp_path / "pairs.jsonl", [{"chosen": "t0", "rejected": "t1"}, bad])
        with pytest.raises(ProbekitError) as err:
            read_pairs(path, trajectories)
        assert "pairs.jsonl:2" in str(err.value) and message in str(err.value)


def test_derive_pairs_is_every_good_bad_combination_within_a_group(tmp_path):
    trajectories = [Trajectory(f"t{i}", g, "p", "c", label) for i, (g, label) in enumerate([("a", 1), ("a", 0), ("a", 0), ("b", 1), ("b", None), ("c", 0)])]
    assert derive_pairs(trajectories) == [Pair("t0", "t1"), Pair("t0", "t2")]
    write_pairs(tmp_path / "p.jsonl", derive_pairs(trajectories))
    assert read_pairs(tmp_path / "p.jsonl", trajectories) == derive_pairs(trajectories)


def test_cli_check_error_is_one_line_with_exit_code_2(tmp_path):
    bad = write_lines(tmp_path / "broken.jsonl", [good(0), '{"id": "t1", "group": '])
    proc = subprocess.run([sys.executable, "-m", "probekit", "data", "check", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.jsonl:2" in lines[0] and "malformed JSON" in lines[0]


def test_cli_check_counts_and_skip_invalid(tmp_path):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401  (registers the commands)
    from probekit_cli.app import app

    path = write_lines(tmp_path / "t.jsonl", [good(0), good(1, label=0), good(2, label=0), {"id": "bad"}])
    pairs = write_lines(tmp_path / "p.jsonl", [{"chosen": "t0", "rejected": "t2"}])
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(path), "--skip-invalid", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["trajectories"] == 3 and summary["pairs"] == 2 and summary["skipped"] == 1
    assert summary["labels"] == {"0": 2, "1": 1}
    result = runner.invoke(app, ["data", "check", str(path), "--skip-invalid", "--pairs", str(pairs), "--json"])
    assert json.loads(result.stdout)["pairs"] == 1
    result = runner.invoke(app, ["data", "check", str(path)])
    assert isinstance(result.exception, ProbekitError) and "t.jsonl:4" in str(result.exception)
