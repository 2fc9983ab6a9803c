"""Every command's summary fits 80 and 120 columns without a cut (issue 21, item 1).

Rich cut a table wider than the terminal: `make demo` at 80 columns showed `baseli…` and two different rows as
`logist…`, `probekit sweep` at 120 printed every value as `0.539…`. Each command with a summary runs here through
the console entry point at COLUMNS=80 and 120: no `…` anywhere, every row label printed whole on one line, no
table line wider than the terminal, and no Python repr (`None`, `[0]`, `['bfloat16']`) on screen. The layout
itself (whole, in parts, in blocks) and `--format markdown|csv` are checked on their own below.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
from rich.cells import cell_len
from rich.console import Console

from probekit_cli.layout import print_summary
from probekit_cli.summary import Summary, fmt_num, fmt_value
from tests.helpers import assert_one_line_error, run_cli

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOX = set("│┃┏┓┗┛┡┩└┘━─╇┳┻╋┼┬┴")
REPRS = re.compile(r"\bNone\b|\bTrue\b|\bFalse\b|\['|\[\d+\]|\d\.\d{4,}")


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> dict:
    """Trajectories, a store of the tiny model, a checkpoint fitted on it, and prompts."""
    from probekit.data.prompts import write_prompts
    from probekit.data.schema import write_trajectories
    from probekit.data.synth import synth_problems, synth_prompts
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.pipeline import fit_probe
    from probekit.store import Store
    from tests.helpers import fast_config

    root = tmp_path_factory.mktemp("widths")
    trajectories = root / "trajectories.jsonl"
    write_trajectories(trajectories, synth_problems(16, 4, seed=0))
    extract(ExtractOptions(trajectories=trajectories, out=root / "store", model=str(tiny_model_dir), layers="1,2", dtype="float32"))
    fit_probe(Store(root / "store"), root / "ckpt", fast_config(widths=(16,), rep_size=8, epochs=3, n_boot=20, layer=2))
    prompts = root / "prompts.jsonl"
    write_prompts(prompts, synth_prompts(2, shots=0))
    return {"model": tiny_model_dir, "trajectories": trajectories, "store": root / "store", "ckpt": root / "ckpt", "prompts": prompts}


def _model(inp) -> list:
    return ["--model", inp["model"], "--template", "raw"]


FIT = ["--widths", "16", "--rep-size", "8", "--epochs", "2", "--n-boot", "20"]
# command -> (its arguments given the inputs and an output folder, row labels it must print whole)
COMMANDS = {
    "extract": (lambda inp, out: ["extract", inp["trajectories"], "--out", out, *_model(inp), "--layers", "2"],
                ["shards_held_by_another_process", "n_prompt_tokens_reused", "model_dtypes"]),
    "fit": (lambda inp, out: ["fit", "--store", inp["store"], "--out", out, "--layer", "2", *FIT],
            ["checkpoint", "probe reward", "logistic_last", "logistic_mean", "probe Q (mean goal), log length regressed out"]),
    "eval": (lambda inp, out: ["eval", "--ckpt", inp["ckpt"], "--out", out, "--n-boot", "20"],
             ["probe reward", "logistic_last", "logistic_mean", "length, within length strata", "detected_frac"]),
    "sweep": (lambda inp, out: ["sweep", "--store", inp["store"], "--out", out, "--lam", "0.5", "--layers", "1,2", "--k", "2", "--seeds", "0,1",
                                *FIT], ["λ 0 · layer 1 · K -", "λ 0.5 · layer 2 · K 2", "baseline logistic_last · layer 1",
                                        "baseline logistic_mean · layer 2"]),
    "filter": (lambda inp, out: ["filter", "--ckpt", inp["ckpt"], "--store", inp["store"], "--out", out, "--no-plots"],
               ["share of tokens saved (fallback groups count as generated)", "AUROC of the per-solution minimum signal"]),
    "generate": (lambda inp, out: ["generate", inp["prompts"], "--out", out, *_model(inp), "--samples", "2", "--max-new-tokens", "4", "--layers", "2"],
                 ["tokens_resumed_for_fallback", "tokens_per_second"]),
    "steer": (lambda inp, out: ["steer", inp["prompts"], "--ckpt", inp["ckpt"], "--out", out, *_model(inp), "--beams", "1", "--candidates", "2",
                                "--step-tokens", "2", "--max-new-tokens", "4"], ["n_best_ended_without_match", "mean_q_best_beam"]),
    "goal": (lambda inp, out: ["goal", "--ckpt", inp["ckpt"], "--from", inp["trajectories"], "--name", "mine", "--out", out, *_model(inp)],
             ["checkpoint_mean_goal_norm", "cosine to mean goal", "n_examples"]),
    "score": (lambda inp, out: ["score", inp["trajectories"], "--ckpt", inp["ckpt"], "--out", out, "--device", "cpu"],
              ["reward mean", "records/s", "truncated"]),
    "baseline": (lambda inp, out: ["baseline", "--from-samples", inp["trajectories"], "--ckpt", inp["ckpt"], "--out", out, "--device", "cpu"],
                 ["n_prompts", "mean_within_std", "k_max"]),
    "demo": (lambda inp, out: ["demo", "--out", out, "--model", inp["model"], "--n-problems", "12", "--solutions", "2", "--epochs", "2",
                               "--n-boot", "20", "--generate-problems", "1", "--generate-tokens", "4"],
             ["goal-conditioned (λ=0.5)", "baseline (λ=0)", "logistic_last", "logistic_mean", "filtered"]),
}

WITHOUT_PROGRESS = {"goal"}  # commands that draw no progress bar (and so take no --no-progress)


def assert_fits(text: str, width: int, labels: list[str]) -> None:
    """Nothing cut, every label whole on one line, no table line past `width`, no Python repr."""
    assert "…" not in text, text
    lines = text.splitlines()
    for label in labels:
        assert any(label in line for line in lines), (label, text)
    wide = [line for line in lines if BOX & set(line) and cell_len(line) > width]
    assert not wide, "\n".join(wide)
    assert not REPRS.findall(text), (REPRS.findall(text), text)


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_summary_fits_the_terminal(inputs, tmp_path, monkeypatch, capsys, command, width):
    monkeypatch.setenv("COLUMNS", str(width))
    args, labels = COMMANDS[command]
    quiet = [] if command in WITHOUT_PROGRESS else ["--no-progress"]
    code, err = run_cli(monkeypatch, capsys, *args(inputs, tmp_path / "out"), *quiet)
    assert code == 0, err
    assert_fits(err, width, labels)


WIDE = Summary("a wide summary of probes", ["probe", "AUROC [95% CI]", "Q AUROC", "pairwise acc", "vote acc", "tokens saved", "note"],
               [["goal-conditioned (λ=0.5), mean-pooled", "0.534 [0.44, 0.63]", "0.612 [0.58, 0.65]", "0.700 [0.61, 0.78]", "65.0%",
                 "23.6% / 2.5%", "CI does not clear the best trivial baseline"],
                ["logistic_last", "0.528 [0.43, 0.62]", "-", "0.500 [0.40, 0.60]", "-", "-", ""],
                ["logistic_mean", "0.531 [0.43, 0.62]", "-", "0.510 [0.41, 0.61]", "-", "-", ""]], wrap=("note",), dim={1, 2})


def _render(summary: Summary, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    print_summary(console, summary)
    return console.file.getvalue()


@pytest.mark.parametrize("width,layout", [(220, "table"), (120, "parts"), (50, "blocks"), (30, "blocks")])
def test_a_wide_summary_is_laid_out_whole_in_parts_or_in_blocks(width, layout):
    text = _render(WIDE, width)
    assert_fits(text, width, [] if width < 40 else [row[0] for row in WIDE.rows])
    tables = text.count("┏")
    assert {"table": tables == 1, "parts": tables >= 2 and "part 2 of" in text, "blocks": tables == 0}[layout], text
    for cell in ("0.534 [0.44, 0.63]", "23.6% / 2.5%", "logistic_mean"):  # numbers are never broken over lines
        assert cell in text, (cell, text)


def test_values_print_as_a_person_reads_them():
    assert [fmt_num(x) for x in (9.125, 831.1, -0.4573, 1.0, 0.0, 12345.6, 0.00012)] == ["9.12", "831", "-0.457", "1", "0", "12346", "1.2e-04"]
    assert [fmt_value(v) for v in (None, [0], ["bfloat16"], [], True, {"a": 1.5}, 3)] == ["-", "0", "bfloat16", "-", "yes", "a 1.5", "3"]


def _run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `probekit ARGS` through the console entry point."""
    from probekit_cli.main import main

    monkeypatch.setattr("sys.argv", ["probekit", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(ln for ln in text.splitlines() if ln and not ln.startswith("#")))


@pytest.mark.parametrize("fmt", ["markdown", "csv"])
def test_format_markdown_and_csv_print_the_summary_on_stdout(inputs, tmp_path, monkeypatch, capsys, fmt):
    code, out, err = _run(monkeypatch, capsys, "eval", "--ckpt", inputs["ckpt"], "--out", tmp_path / "ev", "--n-boot", "20", "--no-progress",
                          "--format", fmt)
    assert code == 0, err
    assert "┃" not in out and "┃" not in err and "metrics and plot written to" in err  # the table on stdout, messages on stderr
    if fmt == "markdown":
        assert out.startswith("**probekit eval: valid split") and "| method | AUROC [95% CI] |" in out and "| logistic_mean |" in out
    else:
        rows = _csv_rows(out)
        assert rows[0] == ["method", "AUROC [95% CI]", "pairwise acc [95% CI]", "note"]
        assert any(r[0] == "probe reward" and re.fullmatch(r"\d\.\d{3} \[\d\.\d\d, \d\.\d\d\]", r[1]) for r in rows[1:]), rows


def test_data_commands_take_the_same_format_option(tmp_path, monkeypatch, capsys):
    code, out, err = _run(monkeypatch, capsys, "data", "synth", "--n-problems", "2", "--solutions", "2", "--out", tmp_path / "d", "--format", "csv")
    assert code == 0, err
    rows = dict(_csv_rows(out)[1:])
    assert rows["trajectories"] == "4" and rows["groups"] == "2" and rows["out"] == str(tmp_path / "d")


def test_json_and_a_text_format_together_are_refused_in_one_line(inputs, tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "fit", "--store", inputs["store"], "--out", tmp_path / "o", "--json", "--format", "csv", *FIT)
    assert_one_line_error(code, err, "--json and --format csv")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_every_number_says_what_it_is_in_a_legend(inputs, tmp_path, monkeypatch, capsys):
    """Issue 21 item 4: the units, scale and direction the issue found missing are printed under the tables."""
    monkeypatch.setenv("COLUMNS", "200")
    said = {}
    for command in ("extract", "eval", "filter", "fit"):
        args, _labels = COMMANDS[command]
        code, err = run_cli(monkeypatch, capsys, *args(inputs, tmp_path / command), "--no-progress")
        assert code == 0, err
        said[command] = " ".join(err.split())
    assert "n_rows_stored: hidden-state rows kept" in said["extract"] and "n_tokens_processed: tokens the model ran over" in said["extract"]
    for text in (said["eval"], said["fit"]):
        assert "AUROC: chance that a correct trajectory scores above an incorrect one (0.5 = chance" in text
    assert "mean_abs_error: mean distance in completion tokens" in said["eval"] and "detected_frac: share of those" in said["eval"]
    assert "threshold: the Q (a cosine, -1 to 1)" in said["eval"]
    assert "length bins held both classes" in said["eval"] and "length's own score: 0.5 by construction" in said["eval"]
    assert "(Q, a cosine in [-1, 1])" in said["filter"] and "a negative threshold is normal" in said["filter"]
    assert "share of tokens saved (fallback groups count as generated): the same, with the tokens of problems" in said["filter"]
