"""Progress in a log file (issue 21, item 2).

`probekit extract ... > log 2>&1` logged transformers' "Loading weights" bar and, 25 s later, the final table:
rich bars draw nothing when stderr is not a terminal. Here the CLI runs in a subprocess with stderr sent to a
file and PROBEKIT_PROGRESS_INTERVAL=0 (a line at every step instead of every 10 s): the file holds plain
done/total lines with a rate and the time left, ending at the total; `generate` counts samples out of the
samples it will write (its bar used to end at 932/2048 tokens); a rate below one a second reads as seconds per
unit (`sweep` showed `0 runs/s`); and transformers' loading bar stays out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from probekit_cli.progress import LineProgress, fmt_duration, fmt_rate
from tests.helpers import assert_one_line_error, planted_store, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _run_to_file(args: list, log: Path, interval: str = "0") -> str:
    """Run `probekit ARGS` with stderr to the file `log` (not a terminal); its text."""
    env = {**os.environ, "PROBEKIT_PROGRESS_INTERVAL": interval, "COLUMNS": "80"}
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "probekit", *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fh,
                              env=env, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    return text


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    from probekit.data.prompts import write_prompts
    from probekit.data.synth import synth_prompts

    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_prompts(path, synth_prompts(3, shots=0))
    return path


def test_generate_logs_samples_done_out_of_the_samples_it_writes(tiny_model_dir, prompts, tmp_path):
    text = _run_to_file(["generate", prompts, "--out", tmp_path / "g", "--model", tiny_model_dir, "--template", "raw", "--samples", "2",
                         "--max-new-tokens", "5", "--layers", "2"], tmp_path / "log")
    lines = [ln for ln in text.splitlines() if ln.startswith("generate: ")]
    counts = [tuple(map(int, m.groups())) for ln in lines if (m := re.match(r"generate: (\d+)/(\d+) samples", ln))]
    assert counts and {total for _, total in counts} == {6}, text  # 3 prompts x 2 samples, whatever their lengths
    assert [done for done, _ in counts] == sorted(done for done, _ in counts) and counts[-1] == (6, 6)
    assert re.search(r"generate: \d+/6 samples \(\d+%\), [\d.,]+ (samples/s|s/sample), \d+:\d\d left; \d+ tokens", text), text
    assert re.fullmatch(r"generate: 6/6 samples \(100%\) in \d+:\d\d, [\d.,]+ (samples/s|s/sample); \d+ tokens", lines[-1]), lines[-1]
    assert "Loading weights" not in text and "\r" not in text


def test_extract_logs_tokens_with_a_rate_and_time_left(tiny_model_dir, tmp_path):
    from probekit.data.schema import write_trajectories
    from probekit.data.synth import synth_problems

    write_trajectories(tmp_path / "t.jsonl", synth_problems(6, 2, seed=0))
    text = _run_to_file(["extract", tmp_path / "t.jsonl", "--out", tmp_path / "s", "--model", tiny_model_dir, "--template", "raw",
                         "--layers", "2", "--max-batch-tokens", "200"], tmp_path / "log")
    lines = [ln for ln in text.splitlines() if ln.startswith("extract: ")]
    assert len(lines) >= 3 and all(re.match(r"extract: [\d,]+/[\d,]+ tokens \(\d+%\)", ln) for ln in lines), text
    assert re.search(r", [\d,]+ tokens/s, \d+:\d\d left", text) and " in " in lines[-1] and "(100%)" in lines[-1], text
    assert "Loading weights" not in text and "probekit extract" in text  # the table follows the progress lines


def test_a_log_gets_no_lines_from_a_loop_shorter_than_the_interval(tiny_model_dir, tmp_path):
    from probekit.data.schema import write_trajectories
    from probekit.data.synth import synth_problems

    write_trajectories(tmp_path / "t.jsonl", synth_problems(2, 2, seed=0))
    text = _run_to_file(["extract", tmp_path / "t.jsonl", "--out", tmp_path / "s", "--model", tiny_model_dir, "--template", "raw",
                         "--layers", "2"], tmp_path / "log", interval="600")
    assert "extract: " not in text and "probekit extract" in text


def test_a_sweep_reports_seconds_per_run_not_zero_runs_a_second(tmp_path, capsys):
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep
    from tests.helpers import fast_config

    store = planted_store(tmp_path / "store", n_groups=8)
    run_sweep(store, tmp_path / "sw", SweepConfig(template=fast_config(epochs=2, n_boot=20), lams=(0.5,), ks=(2,), seeds=(0,)),
              progress=LineProgress(interval=0))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("sweep: ")]
    assert lines and lines[-1].startswith("sweep: 2/2 runs (100%) in "), lines
    # "0 runs/s" as a rate of its own (a fast run's "10 runs/s" contains the text: a false failure on a quiet machine)
    assert not any(re.search(r"(?<![\d.,])0 runs/s", ln) for ln in lines) and all(re.search(r"[\d.]+ (s/run|runs/s)", ln) for ln in lines), lines


def test_rates_below_one_a_second_read_as_seconds_per_unit():
    assert fmt_rate(1, 42.0, "runs") == "42.0 s/run" and fmt_rate(3, 6.0, "batches") == "2.0 s/batch"
    assert fmt_rate(8311, 10.0, "tokens") == "831 tokens/s" and fmt_rate(5, 2.0, "runs") == "2.5 runs/s" and fmt_rate(0, 1.0, "runs") == ""
    assert [fmt_duration(s) for s in (7, 750, 7500)] == ["0:07", "12:30", "2:05:00"]


def test_a_bad_progress_interval_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROBEKIT_PROGRESS_INTERVAL", "soon")
    store = planted_store(tmp_path / "store", n_groups=4)
    code, err = run_cli(monkeypatch, capsys, "store", "verify", store)
    assert_one_line_error(code, err, "PROBEKIT_PROGRESS_INTERVAL", "'soon'")
