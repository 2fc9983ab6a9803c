"""Every command that writes a folder, through the same three checks of its --out (issue 19):

* an --out that holds one of the command's inputs (a checkpoint's training store, a goal folder, a data file) is refused;
* a second writer is refused while a real other process holds the folder's lock, naming that process;
* a write that fails part-way through a set of outputs (a real file-size limit, RLIMIT_FSIZE, as a full disk would)
  leaves the previous complete set, or nothing a reader accepts, never a mix of two runs.

Each command runs through the console entry point in this process (on the tiny model, planted stores and small
input files), so the whole module takes well under a minute.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probekit.outputs import LOCK, MARKER, STAGING, check_set, read_marker
from tests.helpers import assert_one_line_error, fit, planted_arrays, run_cli, toy_trajectories
from tests.store_factory import make_store

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
# Long prompts: every generated trajectory record repeats its prompt, so trajectories.jsonl outweighs each (one-sample) shard.
PROMPTS = [{"id": f"p{i}", "prompt": f"Tom had {10 + i} apples and ate some. " * 12 + f"Question {i}: how many apples are left after {i + 2} "
            "are eaten?", "gold": str(i)} for i in range(4)]


def _jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _inputs(root: Path) -> dict[str, list[Path]]:
    """Two versions of every data command's input (so two runs write different sets), each alone in a folder."""
    sol_keys = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
    out: dict[str, list[Path]] = {}
    for v in range(2):
        n = 6 + 3 * v
        out.setdefault("gsm8k", []).append(_jsonl(root / f"in-gsm8k-{v}" / "sols.jsonl", [
            {"question": f"q{i} {'x' * v}", "ground_truth": "A: 1",
             **{k: {"is_correct": j % 2 == 0, "solution": f"Step: 1 + {j} = {1 + j}. A: {1 + j}"} for j, k in enumerate(sol_keys)}}
            for i in range(n)]))
        out.setdefault("gsm8k-gold", []).append(_jsonl(root / f"in-gold-{v}" / "train.jsonl", [
            {"question": f"Tom has {i} apples and buys {v + 2} more?", "answer": f"{i} + {v + 2} = <<{i}+{v + 2}={i + v + 2}>>{i + v + 2}\n#### {i + v + 2}"}
            for i in range(n)]))
        out.setdefault("math", []).append(_jsonl(root / f"in-math-{v}" / "test.jsonl", [
            {"problem": f"What is {i} + {v}?", "solution": f"It is $\\boxed{{{i + v}}}$."} for i in range(n)]))
        out.setdefault("hh", []).append(_jsonl(root / f"in-hh-{v}" / "test.jsonl", [
            {"chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello {v}", "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go away {v}"} for i in range(n)]))
        out.setdefault("preferences", []).append(_jsonl(root / f"in-preferences-{v}" / "prefs.jsonl", [
            {"prompt": [{"role": "user", "content": f"hi {i}"}], "chosen": [{"role": "assistant", "content": f"hello {v}"}],
             "rejected": [{"role": "assistant", "content": f"go away {v}"}], "margin": i} for i in range(n)]))
        # many completions per prompt: the derived pairs (correct x incorrect) outweigh the trajectories
        out.setdefault("samples", []).append(_jsonl(root / f"in-samples-{v}" / "samples.jsonl", [
            {"prompt": f"What is {i} + 1?", "gold": str(i + 1), "completions": [f"A: {i + 1 + (j % 2)}" for j in range(30 + 2 * v)]}
            for i in range(3)]))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """The inputs of every command: data files, a planted store with a fitted probe, and for the commands that run the tiny
    model, its prompts, a store generated with it and a probe checkpoint trained on that store (with validation groups)."""
    import torch

    from probekit.data.prompts import Prompt
    from probekit.data.schema import write_trajectories
    from probekit.generate.config import GenerateConfig
    from probekit.generate.custom_goals import goal_from_examples, write_goal
    from probekit.generate.generation import generate
    from probekit.models import load_model
    from probekit.outputs import claim_output
    from probekit.probe.checkpoint import load_checkpoint, save_checkpoint, store_info
    from probekit.probe.network import ProbeModel
    from probekit.store import Store

    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "model": tiny_model_dir, "data": _inputs(root)}
    for name, seed in (("planted", 0), ("planted2", 1)):  # stores with answers, so that filter can vote
        states, groups, labels, errors = planted_arrays(n_groups=16, seed=seed)
        w[name] = make_store(root / name / "store", states, groups, labels, answers=["1" if y else "2" for y in labels], error_tokens=errors)
    w["pck"] = fit(w["planted"], root / "pck", epochs=2, n_boot=20).path
    w["prompts"] = _jsonl(root / "in-prompts" / "prompts.jsonl", PROMPTS)
    w["trajectories"] = []
    for v in range(2):
        path = root / f"in-traj-{v}" / "trajectories.jsonl"
        path.parent.mkdir()
        write_trajectories(path, toy_trajectories(6 + 3 * v))
        w["trajectories"].append(path)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    gen = generate([Prompt(p["id"], p["prompt"], p["gold"]) for p in PROMPTS], root / "gen", GenerateConfig(
        model="tiny", samples=2, max_new_tokens=8, template="raw", layers="2", answer="last-number"), loaded=loaded)
    store = Store(gen.out / "store")
    torch.manual_seed(0)
    model = ProbeModel(store.hidden_size, "mlp", (8,), rep_size=4)
    x = store.load_layer(2)
    model.set_normalization(x.mean(0), x.std(0))
    goals = {"mean": np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)}
    split = {"train": ["p0", "p1"], "valid": ["p2", "p3"], "test": []}
    with claim_output(root / "ck", "fit") as out, out.commit_set(last=("config.json",)):
        save_checkpoint(out, model, {"layer": 2, "store": store_info(store)}, goals, split, {})
    w["ck"] = root / "ck"
    ckpt = load_checkpoint(w["ck"])
    with claim_output(root / "goal", "goal") as out, out.commit_set():
        write_goal(out, "mine", *goal_from_examples(ckpt, w["trajectories"][0], loaded, "raw"))
    w["goal"] = root / "goal"
    return w


def _tiny(w) -> list[str]:
    return ["--model", str(w["model"]), "--template", "raw"]


# name: (command written in the marker, args(world, out, variant)); `variant` 0 and 1 write different sets.
COMMANDS = {
    "data synth": ("data", lambda w, o, v: ["data", "synth", "--out", o, "--n-problems", "3", "--solutions", "40", "--seed", v]),
    "data synth-prompts": ("data", lambda w, o, v: ["data", "synth-prompts", "--out", o, "--n-problems", "5", "--seed", v]),
    "data gsm8k": ("data", lambda w, o, v: ["data", "gsm8k", "--solutions", w["data"]["gsm8k"][v], "--out", o]),
    "data gsm8k-gold": ("data", lambda w, o, v: ["data", "gsm8k-gold", "--input", w["data"]["gsm8k-gold"][v], "--out", o]),
    "data gsm8k-corrupt": ("data", lambda w, o, v: ["data", "gsm8k-corrupt", "--input", w["data"]["gsm8k-gold"][v], "--out", o]),
    "data math": ("data", lambda w, o, v: ["data", "math", "--input", w["data"]["math"][v], "--out", o]),
    "data hh": ("data", lambda w, o, v: ["data", "hh", "--input", w["data"]["hh"][v], "--out", o]),
    "data samples": ("data", lambda w, o, v: ["data", "samples", w["data"]["samples"][v], "--out", o, "--gold-field", "gold",
                                              "--answer-parser", "synth"]),
    "data preferences": ("data", lambda w, o, v: ["data", "preferences", w["data"]["preferences"][v], "--out", o]),
    "model export": ("model export", lambda w, o, v: ["model", "export", w["model"], "--out", o, "--dtype", ("float32", "bfloat16")[v]]),
    "extract": ("extract", lambda w, o, v: ["extract", w["trajectories"][v], "--out", o, "--layers", str(1 + v), "--shard-size", "4",
                                            "--dtype", "float32", "--no-progress", "--model", w["model"], *(["--overwrite"] if v else [])]),
    "fit": ("fit", lambda w, o, v: ["fit", "--store", w["planted"], "--out", o, "--epochs", "2", "--widths", "8", "--rep-size", "4",
                                    "--n-boot", "20", "--seed", v, "--no-progress"]),
    "eval": ("eval", lambda w, o, v: ["eval", "--ckpt", w["pck"], "--store", w["planted2" if v else "planted"], "--split", "all", "--out", o,
                                      "--n-boot", "20", "--no-progress"]),
    "sweep": ("sweep", lambda w, o, v: ["sweep", "--store", w["planted"], "--out", o, "--lam", "0", "--seeds", str(v), "--widths", "8",
                                        "--rep-size", "4", "--epochs", "1", "--n-boot", "10", "--no-progress"]),
    "filter": ("filter", lambda w, o, v: ["filter", "--ckpt", w["pck"], "--store", w["planted"], "--out", o, "--threshold", "auto",
                                          "--seed", v, "--no-progress"]),
    "generate": ("generate", lambda w, o, v: ["generate", w["prompts"], "--out", o, *_tiny(w), "--samples", "8", "--max-new-tokens", "10",
                                              "--layers", "1", "--dtype", "float16", "--shard-size", "1", "--seed", v,
                                              "--answer", "last-number", "--no-progress"]),
    "steer": ("steer", lambda w, o, v: ["steer", w["prompts"], "--ckpt", w["ck"], "--out", o, *_tiny(w), "--max-new-tokens", "6",
                                        "--beams", "2", "--candidates", "2", "--step-tokens", "3", "--seed", v, "--no-progress"]),
    "goal": ("goal", lambda w, o, v: ["goal", "--ckpt", w["ck"], "--from", w["trajectories"][v], "--name", f"g{v}", "--out", o, *_tiny(w)]),
    "score": ("score", lambda w, o, v: ["score", w["trajectories"][v], "--ckpt", w["ck"], "--out", o, "--device", "cpu", "--no-progress"]),
    "baseline": ("baseline", lambda w, o, v: ["baseline", "--from-samples", w["trajectories"][v], "--ckpt", w["ck"], "--out", o,
                                              "--device", "cpu", "--no-progress"]),
    "demo": ("demo", lambda w, o, v: ["demo", "--out", o, "--model", w["model"], "--n-problems", "4", "--epochs", "1", "--n-boot", "5",
                                      "--generate-problems", "0", "--no-progress"]),
}

# An --out that holds an input (with --overwrite, so only the input rule can refuse it): (args builder, the input held).
HOLDING_INPUT = {
    **{name: (lambda w, n=name: (COMMANDS[n][1](w, w["data"][n.split()[1]][0].parent, 0), w["data"][n.split()[1]][0]))
       for name in ("data gsm8k", "data math", "data hh", "data samples", "data preferences")},
    "model export": lambda w: (COMMANDS["model export"][1](w, w["model"], 0), w["model"]),
    "data gsm8k-gold": lambda w: (COMMANDS["data gsm8k-gold"][1](w, w["data"]["gsm8k-gold"][0].parent, 0), w["data"]["gsm8k-gold"][0]),
    "data gsm8k-corrupt": lambda w: (COMMANDS["data gsm8k-corrupt"][1](w, w["data"]["gsm8k-gold"][0].parent, 0), w["data"]["gsm8k-gold"][0]),
    "extract": lambda w: (COMMANDS["extract"][1](w, w["trajectories"][0].parent, 0), w["trajectories"][0]),
    "fit": lambda w: (COMMANDS["fit"][1](w, w["planted"], 0), w["planted"]),
    "sweep": lambda w: (COMMANDS["sweep"][1](w, w["planted"].parent, 0), w["planted"]),
    # the checkpoint's training store is an input even when --store names another one
    "eval": lambda w: (COMMANDS["eval"][1](w, w["planted"].parent, 1), w["planted"]),
    "filter": lambda w: (["filter", "--ckpt", w["pck"], "--store", w["planted2"], "--out", w["planted"].parent, "--threshold", "0.1",
                          "--no-progress"], w["planted"]),
    # `generate --filter CK --out DIR` where DIR/store is CK's training store (read for --threshold auto)
    "generate": lambda w: (COMMANDS["generate"][1](w, w["root"] / "gen", 0) + ["--filter", w["ck"], "--threshold", "auto"],
                           w["root"] / "gen" / "store"),
    "steer": lambda w: (COMMANDS["steer"][1](w, w["goal"], 0) + ["--goal-from", w["goal"]], w["goal"]),
    "goal": lambda w: (COMMANDS["goal"][1](w, w["root"] / "gen", 0), w["root"] / "gen" / "store"),
    "score": lambda w: (COMMANDS["score"][1](w, w["trajectories"][0].parent, 0), w["trajectories"][0]),
    # the checkpoint's training store is an input of every command that loads the checkpoint
    "baseline": lambda w: (COMMANDS["baseline"][1](w, w["root"] / "gen", 0), w["root"] / "gen" / "store"),
}
NO_INPUTS = ("data synth", "data synth-prompts", "demo")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (the lock file and the staging area aside: probekit's bookkeeping, not an output)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK and STAGING not in p.relative_to(folder).parts}


def test_every_command_that_writes_a_folder_is_covered():
    from probekit_cli.app import app as top
    from probekit_cli.app import data_app
    from probekit_cli.main import app  # noqa: F401  (registers every command)
    from probekit_cli.model_cmd import model_app

    writers = {c.name or c.callback.__name__ for c in top.registered_commands} - {"data", "serve"}  # serve writes no folder
    data_writers = {c.name or c.callback.__name__ for c in data_app.registered_commands} - {"check", "fetch"}
    model_writers = {c.name or c.callback.__name__ for c in model_app.registered_commands} - {"install"}  # install runs pip, writes no folder
    assert {*writers, *(f"data {n}" for n in data_writers), *(f"model {n}" for n in model_writers)} == set(COMMANDS), \
        "a command that writes a folder is missing here"
    assert set(HOLDING_INPUT) | set(NO_INPUTS) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(HOLDING_INPUT))
def test_an_out_holding_an_input_is_refused(name, world, monkeypatch, capsys):
    args, held = HOLDING_INPUT[name](world)
    out = Path(args[args.index("--out") + 1])
    before = snapshot(out)
    code, err = run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert_one_line_error(code, err, "the input", str(held))
    assert snapshot(out) == before


@pytest.fixture(scope="module")
def holder(world):
    """A real other process holding the lock of one folder per command, as each command's claim takes it."""
    busy = world["root"] / "busy"
    specs = []
    for name, (command, _args) in COMMANDS.items():
        out = busy / name.replace(" ", "-")
        out.mkdir(parents=True)
        (out / "theirs.txt").write_text("being written")
        specs.append({"out": str(out), "command": command, "shared": command == "extract"})
    script = ("import json, sys\nfrom probekit.outputs import claim_output\n"
              "held = [claim_output(s['out'], s['command'], overwrite=True, shared=s['shared']) for s in json.loads(sys.argv[1])]\n"
              "for h in held:\n    h.exclusive() if h.lock.shared else None\n"  # an extract rank replacing its store holds it alone
              "print('held', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(specs)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield busy, proc.pid
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_second_writer_is_refused_naming_the_first(name, world, holder, monkeypatch, capsys):
    busy, pid = holder
    command, args = COMMANDS[name]
    out = busy / name.replace(" ", "-")
    before = snapshot(out)
    code, err = run_cli(monkeypatch, capsys, *args(world, out, 0), "--overwrite")
    assert_one_line_error(code, err, f"probekit {command}", f"pid {pid}", "is writing this folder")
    assert snapshot(out) == before


def _members(folder: Path) -> dict[str, int]:
    return {rel: len(data) for rel, data in snapshot(folder).items() if not rel.endswith(MARKER)}


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"demo"}))  # the demo's outputs are those of the stages above
def test_a_write_that_fails_part_way_leaves_the_previous_set_or_nothing(name, world, tmp_path, monkeypatch, capsys):
    command, args = COMMANDS[name]
    out, reference = tmp_path / "out", tmp_path / "reference"
    for folder, v in ((out, 0), (reference, 1)):
        code, err = run_cli(monkeypatch, capsys, *args(world, folder, v))
        assert code == 0, err
    before = snapshot(out)
    sizes = _members(reference)
    assert sizes != _members(out) or snapshot(reference) != before  # the second run writes another set
    # A file-size limit just below the largest file of the second set: that write fails like a full disk, after the smaller
    # files of the set were written (the shards of a store stay under it: HDF5 on a full disk is not the subject here).
    # The margin covers the numbers (seconds) that change a file's length between runs.
    # extract has removed the old shards by the time it writes its new manifest (about 1.5 kB), which is what fails there.
    limit = 1024 if command == "extract" else max(size for rel, size in sizes.items() if not rel.endswith(".h5")) - 64
    assert command == "extract" or all(size < limit for rel, size in sizes.items() if rel.endswith(".h5")), sizes
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        code, err = run_cli(monkeypatch, capsys, *args(world, out, 1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err and lines[-1].startswith("error:") and "File too large" in lines[-1], err
    if command == "extract":  # a store is replaced shard by shard: what is left must never read as a store
        from probekit.errors import ProbekitError
        from probekit.store import Store

        with pytest.raises(ProbekitError, match="incomplete|not a probekit store"):
            Store(out)
        return
    assert snapshot(out) == before  # the previous set, byte for byte, and its marker
    check_set(out)
    assert read_marker(out)["set"]["state"] == "complete"
    # and a run that completes afterwards replaces the whole set
    code, err = run_cli(monkeypatch, capsys, *args(world, out, 1))
    assert code == 0, err
    assert set(_members(out)) == set(sizes) if command != "sweep" else set(_members(out)) >= set(sizes)  # a sweep keeps earlier runs


# ---- the output defects of issue 19, one test each ---------------------------------------------------------------------
def test_generate_refuses_to_write_over_the_store_its_filter_threshold_is_read_from(world, monkeypatch, capsys):
    """Defect 1: `generate --filter CK --threshold auto --out DIR` with DIR/store CK's training store read the store for the
    threshold, then replaced it (exit 0), and `eval --ckpt CK` then evaluated the new samples."""
    out = world["root"] / "gen"
    before = snapshot(out)
    args = COMMANDS["generate"][1](world, out, 0)
    code, err = run_cli(monkeypatch, capsys, *args, "--filter", world["ck"], "--threshold", "auto")
    assert_one_line_error(code, err, "holds the input", str(out / "store"))
    assert snapshot(out) == before


def _lock_holder(folder: Path) -> dict | None:
    try:
        return json.loads((folder / LOCK).read_text())
    except (OSError, ValueError):
        return None


def test_two_generate_processes_on_one_out_the_second_is_refused_and_the_first_finishes(world, tmp_path):
    """Defect 2: both exited 0 and the finished output of one was destroyed. The first is paused (SIGSTOP) while it holds
    the folder, so the second certainly runs meanwhile."""
    import os
    import signal
    import time

    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "probekit", *map(str, COMMANDS["generate"][1](world, out, 0))]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (_lock_holder(out) or {}).get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() is not None else "no lock"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert f"`probekit generate` (pid {first.pid}" in " ".join(second.stderr.split()) and "is writing this folder" in second.stderr
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
    from probekit.data.schema import read_trajectories
    from probekit.store import Store

    check_set(out)
    trajectories, _ = read_trajectories(out / "trajectories.jsonl")
    assert len(trajectories) == len(Store(out / "store")) == len(PROMPTS) * 8
    assert not (out / LOCK).exists() and not (out / STAGING).exists()


def test_data_files_are_one_set_and_data_check_refuses_a_mix(world, tmp_path, monkeypatch, capsys):
    """Defect 6: trajectories.jsonl and pairs.jsonl were renamed one after the other; a full disk in between left new
    trajectories beside old pairs, and `data check` accepted the mix."""
    out, other = tmp_path / "d", tmp_path / "other"
    synth = lambda folder, seed: ["data", "synth", "--out", folder, "--n-problems", "3", "--solutions", "40", "--seed", seed]  # noqa: E731
    for folder, seed in ((out, 0), (other, 1)):
        assert run_cli(monkeypatch, capsys, *synth(folder, seed))[0] == 0
    before = snapshot(out)
    assert (other / "pairs.jsonl").stat().st_size > (other / "trajectories.jsonl").stat().st_size  # the second file is the bigger
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, ((other / "pairs.jsonl").stat().st_size - 64, hard))  # the disk fills at pairs.jsonl
    try:
        code, err = run_cli(monkeypatch, capsys, *synth(out, 1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert_one_line_error(code, err, str(out / "pairs.jsonl"), "too large")
    assert snapshot(out) == before  # trajectories.jsonl is the old one too
    code, err = run_cli(monkeypatch, capsys, "data", "check", out / "trajectories.jsonl", "--pairs", out / "pairs.jsonl")
    assert code == 0, err
    # files of two sets side by side (one copied over from another run): refused, naming the file
    (out / "trajectories.jsonl").write_bytes((other / "trajectories.jsonl").read_bytes())
    for args in (["data", "check", out / "trajectories.jsonl", "--pairs", out / "pairs.jsonl"],
                 ["extract", out / "trajectories.jsonl", "--out", tmp_path / "st", "--model", world["model"], "--no-progress"]):
        code, err = run_cli(monkeypatch, capsys, *args)
        assert_one_line_error(code, err, str(out / "trajectories.jsonl"), "not one set")
    assert not (tmp_path / "st").exists()


def test_a_commit_cut_short_is_refused_by_readers_and_finished_by_the_next_claim(tmp_path, monkeypatch, capsys):
    """Defect 6, the crash case: the marker says `committing` while new and old files sit side by side (planted as a kill
    between two renames leaves them). A reader refuses the folder; the next claim of it finishes the commit."""
    out, new = tmp_path / "d", tmp_path / "new"
    for folder, seed in ((out, 0), (new, 1)):
        assert run_cli(monkeypatch, capsys, "data", "synth", "--out", folder, "--n-problems", "3", "--seed", seed)[0] == 0
    marker = json.loads((out / MARKER).read_text())
    expected = snapshot(new)
    (out / STAGING).mkdir()
    (new / "pairs.jsonl").rename(out / STAGING / "pairs.jsonl")  # not renamed into place yet
    (out / "trajectories.jsonl").write_bytes((new / "trajectories.jsonl").read_bytes())  # already renamed into place
    marker["set"] = {"state": "committing", "incoming": ["trajectories.jsonl", "pairs.jsonl"], "removing": []}
    (out / MARKER).write_text(json.dumps(marker))
    code, err = run_cli(monkeypatch, capsys, "data", "check", out / "trajectories.jsonl", "--pairs", out / "pairs.jsonl")
    assert_one_line_error(code, err, str(out), "not one set", "committing")
    from probekit.outputs import claim_output

    with claim_output(out, "data", ("trajectories.jsonl", "pairs.jsonl")):
        pass
    assert {k: v for k, v in snapshot(out).items() if k != MARKER} == {k: v for k, v in expected.items() if k != MARKER}  # the new set
    code, err = run_cli(monkeypatch, capsys, "data", "check", out / "trajectories.jsonl", "--pairs", out / "pairs.jsonl")
    assert code == 0, err
    assert read_marker(out)["set"]["state"] == "complete" and not (out / STAGING).exists()


class _CtrlCAfter:
    """A progress display whose task raises KeyboardInterrupt at its n-th update: Ctrl-C in the middle of the work."""

    def __init__(self, n: int):
        self.n = n

    def task(self, description, total, unit=""):
        outer = self

        class Task:
            def advance(self, k=1, note=""):
                outer.n -= 1
                if outer.n == 0:
                    raise KeyboardInterrupt

            def close(self):
                pass

        return Task()


def test_generate_resumes_an_interrupted_run_and_writes_what_an_uninterrupted_run_writes(world, tmp_path):
    """Defect 19: after Ctrl-C the store said "re-run `probekit extract` to resume", but generate started again from the
    first prompt. Now the finished prompts of the complete shards are kept (one prompt is cut by a shard boundary: its
    stored samples are kept, the rest sampled again) and the re-run's output equals an uninterrupted run's, byte for byte."""
    from probekit.data.prompts import Prompt
    from probekit.errors import Interrupted
    from probekit.generate.config import GenerateConfig
    from probekit.generate.generation import generate
    from probekit.models import load_model
    from tests.helpers import assert_same_store

    loaded = load_model(str(world["model"]), device="cpu")
    prompts = [Prompt(p["id"], p["prompt"], p["gold"]) for p in PROMPTS]
    cfg = GenerateConfig(model="tiny", samples=3, max_new_tokens=8, template="raw", layers="1,2", answer="last-number", batch_size=3,
                         shard_size=2, dtype="float32")
    ref = generate(prompts, tmp_path / "ref", cfg, loaded=loaded)
    out = tmp_path / "cut"
    with pytest.raises(Interrupted, match="re-running the same command resumes") as cut:
        generate(prompts, out, cfg, loaded=loaded, progress=_CtrlCAfter(14))
    kept = sorted(p.name for p in (out / STAGING / "store").glob("shard-*.h5"))
    assert kept and not (out / "trajectories.jsonl").exists() and not (out / "store").exists()  # nothing half-done in place
    assert f"the {len(kept) * 2 // 3} in complete shards are kept" in str(cut.value)
    again = generate(prompts, out, cfg, loaded=loaded)
    assert again.stats["n_prompts_resumed"] == len(kept) * 2 // 3 and len(kept) * 2 % 3  # a prompt was cut by a shard boundary
    for name in ("trajectories.jsonl", "pairs.jsonl", "store/pairs.jsonl"):
        assert (out / name).read_bytes() == (ref.out / name).read_bytes(), name
    assert_same_store(ref.out / "store", out / "store")  # every array of every shard, states included, exactly
    for key in ("tokens_generated", "tokens_resumed_for_fallback", "n_trajectories", "n_hit_max_new_tokens", "store_cache_key"):
        assert again.stats[key] == ref.stats[key], key
    assert not (out / STAGING).exists()


def test_steer_keeps_finished_prompts_on_ctrl_c_and_resumes_them(world, tmp_path, monkeypatch, capsys):
    """Defect 19: steer wrote nothing until every prompt was done, so Ctrl-C discarded them all. A real SIGINT to a running
    `probekit steer`, then the same command again: the output equals an uninterrupted run's, byte for byte."""
    import os
    import signal
    import time

    prompts = _jsonl(tmp_path / "prompts.jsonl", [{**p, "id": f"{p['id']}{k}"} for k in range(2) for p in PROMPTS])
    args = lambda out: COMMANDS["steer"][1](world, out, 0)[:1] + [prompts] + COMMANDS["steer"][1](world, out, 0)[2:]  # noqa: E731
    assert run_cli(monkeypatch, capsys, *args(tmp_path / "ref"))[0] == 0
    out = tmp_path / "cut"
    # As from an interactive shell: SIGINT at its default, so Python installs its handler. A suite started in the background
    # by a non-interactive shell (`make test &`, CI runners) would pass SIGINT on ignored, and steer would never hear it.
    proc = subprocess.Popen([sys.executable, "-m", "probekit", *map(str, args(out))], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = out / STAGING / "prompts.partial.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.exists() and journal.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no prompt finished"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = " ".join(err.split())
    assert "Traceback" not in err and "interrupted:" in line and "re-running the same command resumes after them" in line, err
    assert not (out / "trajectories.jsonl").exists()
    code, err = run_cli(monkeypatch, capsys, *args(out))
    assert code == 0, err
    for name in ("trajectories.jsonl", "steering.json"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_a_dangling_symlink_out_is_one_clear_line(tmp_path, monkeypatch, capsys):
    """Defect 20: it said "cannot write there (File exists)"."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    code, err = run_cli(monkeypatch, capsys, "data", "synth", "--out", link, "--n-problems", "2")
    assert_one_line_error(code, err, str(link), "symbolic link", "does not exist")
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("command", ["extract", "generate"])
def test_a_command_that_fails_after_claiming_its_out_leaves_no_folder(command, world, tmp_path, monkeypatch, capsys):
    """Defect 20: a model that does not load, after --out was claimed, left a folder holding only probekit's marker."""
    out = tmp_path / "o"
    args = COMMANDS[command][1](world, out, 0)
    args[args.index("--model") + 1] = tmp_path / "no-such-model"
    code, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "no-such-model")
    assert not out.exists()


def test_steer_has_only_the_options_it_reads_with_help_true_for_it(world, tmp_path, monkeypatch, capsys):
    """Defect 20: steer took --samples, --dtype "storage" and others it never reads, and its errors named them."""
    import typer.main
    from probekit_cli.main import app

    params = {p.name: p for p in typer.main.get_command(app).commands["steer"].params}
    assert not {"samples", "batch_size", "shard_size", "layers"} & set(params)
    assert "generation.json" not in params["max_new_tokens"].help and "Storage" not in params["dtype"].help
    assert "batching" not in params["seed"].help
    args = COMMANDS["steer"][1](world, tmp_path / "s", 0)
    code, err = run_cli(monkeypatch, capsys, *args, "--samples", "3")
    assert code == 2 and "No such option" in err and "--samples" in err
    args[args.index("--max-new-tokens") + 1] = "0"
    code, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "--max-new-tokens 0")
    assert "--samples" not in err and "--batch-size" not in err and "--shard-size" not in err
    assert not (tmp_path / "s").exists()
