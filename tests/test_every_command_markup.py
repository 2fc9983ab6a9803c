"""Every command with rich markup in its output path (issue 19, defect 14).

Rich reads `[...]` as markup: an output folder named `out[/]` crashed the success message after all the work
was done (exit 1), and one named `[red]x[/red]` printed a path that does not exist (`.../x`). Each command
runs here, through the console entry point, into such a folder (`probekit data check` on a file inside one,
`probekit data fetch` with its cache there, `probekit goal` with such a goal name as well): it must succeed
and print the real path. Both names failed on commit 904a079 for every command; `test_every_command_is_here`
keeps the list complete.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import typer

from tests.helpers import run_cli, sha256

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOSTILE = ("out[/]", "[red]x[/red]")


def _lines(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Small real inputs for every command: trajectories, a store of the tiny model, a checkpoint fitted on it, prompts,
    and one file in each adapter's format."""
    from probekit.data.prompts import write_prompts
    from probekit.data.schema import write_trajectories
    from probekit.data.synth import synth_problems, synth_prompts
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.pipeline import fit_probe
    from probekit.store import Store
    from tests.helpers import fast_config

    root = tmp_path_factory.mktemp("markup-inputs")
    trajectories = root / "data" / "trajectories.jsonl"
    write_trajectories(trajectories, synth_problems(16, 4, seed=0))
    extract(ExtractOptions(trajectories=trajectories, out=root / "store", model=str(tiny_model_dir), layers="2", dtype="float32"))
    fit_probe(Store(root / "store"), root / "ckpt", fast_config(widths=(16,), rep_size=8, epochs=3, n_boot=20))
    prompts = root / "prompts.jsonl"
    write_prompts(prompts, synth_prompts(2, shots=0))
    solution = {"solution": "3 + 4 = 7\nA: 7", "is_correct": True}
    return {
        "model": tiny_model_dir, "trajectories": trajectories, "store": root / "store", "ckpt": root / "ckpt", "prompts": prompts,
        "gsm8k_solutions": _lines(root / "gsm8k" / "example_model_solutions.jsonl", [{"question": "3 + 4?", "ground_truth": "#### 7", **{
            k: solution for k in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")}}]),
        "gsm8k_train": _lines(root / "gsm8k" / "train.jsonl", [{"question": "Tom has 3 apples and buys 4 more. How many?",
                                                                "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"}]),
        "math": _lines(root / "math" / "test.jsonl", [{"problem": "2 + 2?", "solution": "It is $\\boxed{4}$."}]),
        "hh": _lines(root / "hh" / "test.jsonl.gz", [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}]),
        "samples": _lines(root / "samples.jsonl", [{"prompt": "2 + 2?", "completions": ["A: 4", "A: 5"], "gold": 4}]),
        "preferences": _lines(root / "preferences.jsonl", [{"prompt": "2 + 2?", "chosen": "A: 4", "rejected": "A: 5"}]),
        "served": _lines(root / "served" / "toy" / "a.jsonl", [{"question": "q", "answer": "#### 1"}]).parent.parent,
    }


def _model(inp) -> list:
    return ["--model", inp["model"], "--template", "raw"]


def _fetch(inp, out: Path, _name: str, monkeypatch) -> list:
    """The data set `toy` from a local mirror into a cache folder named `out` (printed: its data folder)."""
    from probekit.data import fetch
    from probekit.data.fetch import DataFile

    src = inp["served"] / "toy" / "a.jsonl"
    monkeypatch.setitem(fetch.DATASETS, "toy", (DataFile("toy/a.jsonl", "http://127.0.0.1:9/toy/a.jsonl", sha256(src.read_bytes()),
                                                         src.stat().st_size),))
    monkeypatch.setenv("PROBEKIT_CACHE", str(out))
    return ["data", "fetch", "toy", "--mirror", inp["served"].as_uri(), "--no-progress"]


def _check(inp, out: Path, _name: str, _monkeypatch) -> list:
    """`data check` of a trajectories file inside a folder named `out` (printed: the file)."""
    out.mkdir(parents=True)  # `out[/]` is the folder `]` inside the folder `out[`
    target = out / "trajectories.jsonl"
    target.write_bytes(inp["trajectories"].read_bytes())
    return ["data", "check", target]


def _verify(inp, out: Path, _name: str, _monkeypatch) -> list:
    """`store verify` of a copy of the store in a folder named `out` (printed: the folder)."""
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(inp["store"], out)
    return ["store", "verify", out, "--no-progress"]


# command -> its arguments, given the inputs, the output folder, its hostile name (goal's --name too) and monkeypatch
COMMANDS = {
    "data synth": lambda inp, out, name, mp: ["data", "synth", "--n-problems", "2", "--out", out],
    "data synth-prompts": lambda inp, out, name, mp: ["data", "synth-prompts", "--n-problems", "2", "--out", out],
    "data gsm8k": lambda inp, out, name, mp: ["data", "gsm8k", "--solutions", inp["gsm8k_solutions"], "--out", out],
    "data gsm8k-gold": lambda inp, out, name, mp: ["data", "gsm8k-gold", "--input", inp["gsm8k_train"], "--out", out],
    "data gsm8k-corrupt": lambda inp, out, name, mp: ["data", "gsm8k-corrupt", "--input", inp["gsm8k_train"], "--out", out],
    "data math": lambda inp, out, name, mp: ["data", "math", "--input", inp["math"], "--out", out],
    "data hh": lambda inp, out, name, mp: ["data", "hh", "--input", inp["hh"], "--out", out],
    "data samples": lambda inp, out, name, mp: ["data", "samples", inp["samples"], "--gold-field", "gold", "--out", out],
    "data preferences": lambda inp, out, name, mp: ["data", "preferences", inp["preferences"], "--out", out],
    "data check": _check,
    "data fetch": _fetch,
    "store verify": _verify,
    "model export": lambda inp, out, name, mp: ["model", "export", inp["model"], "--out", out],
    "extract": lambda inp, out, name, mp: ["extract", inp["trajectories"], "--out", out, *_model(inp), "--layers", "2", "--no-progress"],
    "fit": lambda inp, out, name, mp: ["fit", "--store", inp["store"], "--out", out, "--widths", "16", "--rep-size", "8", "--epochs", "2",
                                 "--n-boot", "20", "--no-progress"],
    "eval": lambda inp, out, name, mp: ["eval", "--ckpt", inp["ckpt"], "--out", out, "--n-boot", "20", "--no-progress"],
    "sweep": lambda inp, out, name, mp: ["sweep", "--store", inp["store"], "--out", out, "--lam", "0.5", "--k", "2", "--seeds", "0", "--widths", "16",
                                   "--rep-size", "8", "--epochs", "2", "--n-boot", "20", "--no-progress"],
    "filter": lambda inp, out, name, mp: ["filter", "--ckpt", inp["ckpt"], "--store", inp["store"], "--out", out, "--no-plots", "--no-progress"],
    "generate": lambda inp, out, name, mp: ["generate", inp["prompts"], "--out", out, *_model(inp), "--samples", "2", "--max-new-tokens", "4",
                                      "--layers", "2", "--no-progress"],
    "steer": lambda inp, out, name, mp: ["steer", inp["prompts"], "--ckpt", inp["ckpt"], "--out", out, *_model(inp), "--beams", "1",
                                   "--candidates", "2", "--step-tokens", "2", "--max-new-tokens", "4", "--no-progress"],
    "goal": lambda inp, out, name, mp: ["goal", "--ckpt", inp["ckpt"], "--from", inp["trajectories"], "--name", name, "--out", out, *_model(inp)],
    "score": lambda inp, out, name, mp: ["score", inp["trajectories"], "--ckpt", inp["ckpt"], "--out", out, "--device", "cpu", "--no-progress"],
    "baseline": lambda inp, out, name, mp: ["baseline", "--from-samples", inp["trajectories"], "--ckpt", inp["ckpt"], "--out", out,
                                      "--device", "cpu", "--no-progress"],
    "demo": lambda inp, out, name, mp: ["demo", "--out", out, "--model", inp["model"], "--n-problems", "12", "--solutions", "2", "--epochs", "2",
                                  "--n-boot", "20", "--generate-problems", "1", "--generate-tokens", "4", "--no-progress"],
}
# what a command prints with the real path (and goal's name) in it: the folder's path unless said here
PRINTED = {"data synth-prompts": ("{out}/prompts.jsonl",), "data check": ("check {out}/trajectories.jsonl",),
           "data fetch": ("in {out}/data ",), "goal": ("goal '{name}' from", "written to {out}")}


def _commands(group, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield from _commands(cmd, f"{prefix}{name} ") if hasattr(cmd, "commands") else [f"{prefix}{name}"]


# commands that write no folder and run until stopped; where their printed paths are tested instead
NOT_RUN_HERE = {"serve": "tests/test_serve.py", "model install": "tests/test_model_export.py (it writes no folder: it runs pip)"}


def test_every_command_is_here():
    import probekit_cli.main  # noqa: F401  (registers every command)
    from probekit_cli.app import app

    assert sorted(_commands(typer.main.get_command(app))) == sorted([*COMMANDS, *NOT_RUN_HERE])


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_prints_the_real_path_of_an_output_folder_named_like_markup(inputs, tmp_path, monkeypatch, capsys, command, name):
    monkeypatch.setenv("COLUMNS", "4000")  # rich reads it at each print: tables do not fold a long path into several lines
    out = tmp_path / name
    code, err = run_cli(monkeypatch, capsys, *COMMANDS[command](inputs, out, name, monkeypatch))
    assert code == 0, err
    assert "Traceback" not in err
    for expected in PRINTED.get(command, ("{out}",)):
        assert expected.format(out=out, name=name) in err, (expected, err)
