"""MATH: `probekit data fetch math` (through a file:// source, never the network) and the adapter that reads it.

The records below are written in PRM800K's `math_splits/test.jsonl` format with
MATH-style LaTeX (nested braces, escaped set braces, thin spaces, several boxes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probekit.data import fetch
from probekit.data.competition_math import boxed_answer, gold_solutions
from probekit.data.fetch import fetch_datasets, resolve_data_dir
from probekit.errors import ProbekitError
from tests.helpers import assert_one_line_error, files_under, run_cli, sha256

RECORDS = [
    {"problem": "What is the greatest common factor of $20 !$ and $200,\\!000$?",
     "solution": "The prime factorization of $200,000$ is $2^6 \\cdot 5^5$. So the greatest common factor is $2^6 \\cdot 5^4=\\boxed{40,\\!000}$.",
     "answer": "40,\\!000", "subject": "Number Theory", "level": 5, "unique_id": "test/number_theory/1.json"},
    {"problem": "Find $\\sin 60^\\circ$.",
     "solution": "Try $\\boxed{1}$ first: too big. The point is $\\left( \\frac12, \\frac{\\sqrt{3}}{2} \\right)$, so the answer is $\\boxed{\\dfrac{\\sqrt{3}}{2}}$.",
     "answer": "\\frac{\\sqrt{3}}{2}", "subject": "Precalculus", "level": 1, "unique_id": "test/precalculus/2.json"},
    {"problem": "Which integers $n$ satisfy $n^2 = n$?",
     "solution": "Then $n(n-1)=0$, so the set is $\\boxed{\\{0, 1\\}}$.",
     "answer": "\\{0,1\\}", "subject": "Algebra", "level": 2, "unique_id": "test/algebra/3.json"},
]


def write_math(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_boxed_answers_are_the_last_box_brace_balanced_and_canonical():
    assert [boxed_answer(r["solution"]) for r in RECORDS] == ["40,000", "\\frac{\\sqrt{3}}{2}", "\\{0,1\\}"]
    assert boxed_answer("so $x = \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$") == "(3,\\frac{\\pi}{2})"
    assert boxed_answer("\\fbox{7} and nothing else") == "7"
    assert boxed_answer("no box here, 42") is None
    assert boxed_answer("an unclosed \\boxed{\\frac{1}{2}") is None


def test_gold_solutions_are_label_1_trajectories_grouped_by_problem(tmp_path):
    trajs = gold_solutions(write_math(tmp_path / "math" / "test.jsonl", RECORDS))
    assert [(t.id, t.group, t.label) for t in trajs] == [(f"math-test-{i}-gold", f"math-test-{i}", 1) for i in range(3)]
    assert [t.prompt for t in trajs] == [r["problem"] for r in RECORDS]
    assert [t.completion for t in trajs] == [r["solution"] for r in RECORDS]
    assert [t.answer for t in trajs] == ["40,000", "\\frac{\\sqrt{3}}{2}", "\\{0,1\\}"]
    assert trajs[1].meta == {"unique_id": "test/precalculus/2.json", "subject": "Precalculus", "level": 1}


@pytest.mark.parametrize("bad, message", [
    ({"problem": "p", "solution": "no answer given"}, ":2: the solution has no \\\\boxed"),
    ({"problem": "p", "solution": "\\boxed{1"}, ":2: the solution has no \\\\boxed"),
    ({"problem": "p"}, ":2: missing, empty or non-string field 'solution'"),
    ({"problem": "", "solution": "\\boxed{1}"}, ":2: missing, empty or non-string field 'problem'"),
])
def test_bad_records_name_the_file_and_line(tmp_path, bad, message):
    path = write_math(tmp_path / "test.jsonl", [RECORDS[0], bad])
    with pytest.raises(ProbekitError, match=message) as exc:
        gold_solutions(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_cli_data_math_writes_trajectories_and_pairs(tmp_path):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401  (registers the commands)
    from probekit_cli.app import app

    src = write_math(tmp_path / "math" / "test.jsonl", RECORDS)
    result = CliRunner().invoke(app, ["data", "math", "--input", str(src), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["trajectories"], summary["groups"], summary["pairs"], summary["labels"]) == (3, 3, 0, {"1": 3})
    lines = (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()
    assert [json.loads(line)["answer"] for line in lines] == ["40,000", "\\frac{\\sqrt{3}}{2}", "\\{0,1\\}"]


def test_bad_record_through_the_cli_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    src = write_math(tmp_path / "test.jsonl", [{"problem": "p", "solution": "no box"}])
    code, err = run_cli(monkeypatch, capsys, "data", "math", "--input", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, f"{src}:1", "\\boxed")


# --- fetch -------------------------------------------------------------------------------------------

def test_math_is_pinned_to_prm800k_with_its_licence():
    data, licence = fetch.DATASETS["math"]
    assert data.path == "math/test.jsonl" and licence.path == "math/LICENSE"
    commit = "7ecc794703b2877f63226f2477a49b34f9b25163"
    # Git LFS content lives on the media host; raw.githubusercontent.com would serve the 131-byte pointer.
    assert data.url == f"https://media.githubusercontent.com/media/openai/prm800k/{commit}/prm800k/math_splits/test.jsonl"
    assert licence.url == f"https://raw.githubusercontent.com/openai/prm800k/{commit}/LICENSE"
    assert (data.sha256, data.size) == ("35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132", 446564)


def test_fetch_math_from_a_file_source_verifies_caches_and_feeds_the_adapter(cache, monkeypatch, tmp_path):
    """A copy laid out like a data folder, served by file://, pinned to its own bytes: fetched, then read as --data-dir math."""
    served = tmp_path / "served"
    write_math(served / "math" / "test.jsonl", RECORDS)
    (served / "math" / "LICENSE").write_text("MIT License\n")
    monkeypatch.setitem(fetch.DATASETS, "math", tuple(
        fetch.DataFile(f.path, f.url, sha256((served / f.path).read_bytes()), (served / f.path).stat().st_size) for f in fetch.DATASETS["math"]))
    done = fetch_datasets(["math"], mirror=served.as_uri())
    assert [(f.status, f.url) for f in done] == [("downloaded", f"{served.as_uri()}/math/test.jsonl"), ("downloaded", f"{served.as_uri()}/math/LICENSE")]
    assert files_under(cache) == ["math/LICENSE", "math/test.jsonl"]
    root = resolve_data_dir("math", mirror=served.as_uri())
    assert root == cache and [f.status for f in fetch_datasets(["math"], mirror=served.as_uri())] == ["cached", "cached"]
    assert [t.answer for t in gold_solutions(root / "math" / "test.jsonl")] == ["40,000", "\\frac{\\sqrt{3}}{2}", "\\{0,1\\}"]


def test_fetch_math_refuses_bytes_that_are_not_the_pinned_file(monkeypatch, capsys, cache, tmp_path):
    served = tmp_path / "served"
    write_math(served / "math" / "test.jsonl", RECORDS)
    code, err = run_cli(monkeypatch, capsys, "data", "fetch", "math", "--mirror", served.as_uri(), "--no-progress")
    assert_one_line_error(code, err, "math/test.jsonl: refused the download", fetch.DATASETS["math"][0].sha256,
                          sha256((served / "math" / "test.jsonl").read_bytes()))
    assert files_under(cache) == []
