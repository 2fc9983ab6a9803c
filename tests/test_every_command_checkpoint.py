"""Every command that takes a checkpoint opens it one way and ties it to the states it reads one way.

One real world is built once: a tiny random Llama, a store extracted from it, a probe fitted on that store
(and a second one with another seed), a sweep of one run; beside them two other tiny models (another seed of
the same width, and a wider one) and stores extracted from those. The parametrised test damages a copy of the
checkpoint as a hand edit or a broken disk would, or pairs it with a model that is not its own, and runs each
command that reads a checkpoint (eval, filter, generate --filter, steer, goal --from, and sweep where it
reloads its runs) through the console entry point: each must exit 2 with one line naming the file (or both
models), no traceback; the intact checkpoint must work in each. The tests after it pin each defect of issue 19
that this covers (3, 4, 5, 7, 8 and the checkpoint/goal/filter/sweep part of 15).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from probekit.errors import ProbekitError
from tests.helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SWEEP_ARGS = ["--lam", "0", "--layers", "4", "--widths", "32", "--k", "2", "--seeds", "0", "--epochs", "2", "--rep-size", "4",
              "--n-boot", "20", "--no-progress"]
DECODE = ["--template", "raw", "--max-new-tokens", "4", "--no-progress"]


@dataclass
class World:
    root: Path
    models: dict  # name -> model folder: "tiny" (the checkpoint's), "other" (another seed, same width), "wide" (another width)
    stores: dict  # name -> store extracted from that model (layers 2 and 4)
    ckpt: Path  # fitted on stores["tiny"], layer 4
    ckpt2: Path  # the same fit with another seed: another probe of the same model
    prompts: Path
    examples: Path
    sweep: Path  # a sweep of one run on stores["tiny"] (SWEEP_ARGS)
    run: str  # that run's folder name under sweep/runs


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> World:
    import probekit_cli.main  # noqa: F401  (registers the commands)
    import torch
    from probekit_cli.app import app
    from typer.testing import CliRunner

    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.models import load_model
    from tests.helpers import fit, toy_trajectories
    from tests.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("every-command")
    models = {"tiny": tiny_model_dir, "other": build_tiny_model(root / "other-model", seed=1),
              "wide": build_tiny_model(root / "wide-model", hidden=48, seed=0)}
    write_trajectories(root / "data.jsonl", toy_trajectories(30))
    stores = {}
    for name, folder in models.items():
        extract(ExtractOptions(trajectories=root / "data.jsonl", out=root / f"store-{name}", layers="2,4", template="raw", dtype="float32"),
                loaded=load_model(str(folder), device="cpu"))
        stores[name] = root / f"store-{name}"
    torch.manual_seed(0)
    ckpt = fit(stores["tiny"], root / "ckpt", layer=4, n_boot=20).path
    ckpt2 = fit(stores["tiny"], root / "ckpt2", layer=4, n_boot=20, seed=1).path
    (root / "prompts.jsonl").write_text('{"id": "a", "prompt": "Tom has 3 apples and buys 4 more.", "gold": "7"}\n')
    write_trajectories(root / "examples.jsonl", toy_trajectories(3))
    res = CliRunner().invoke(app, ["sweep", "--store", str(stores["tiny"]), "--out", str(root / "sweep"), *SWEEP_ARGS])
    assert res.exit_code == 0, res.output
    (run,) = [p.name for p in (root / "sweep" / "runs").iterdir()]
    return World(root, models, stores, ckpt, ckpt2, root / "prompts.jsonl", root / "examples.jsonl", root / "sweep", run)


def without_load_bar(err: str) -> str:
    """stderr without the progress bar transformers draws while it loads weights (not probekit's: it prints before any check)."""
    return "\n".join(line for line in err.splitlines() if not line.startswith("Loading weights"))


# ---- the damages: each returns the file the error must name -------------------------------------------------------
def _edit(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def damage(ck: Path, kind: str) -> str:
    config = ck / "config.json"
    if kind == "config-not-json":
        config.write_text('{"format": "probekit-probe", ')
    elif kind == "config-not-utf8":
        config.write_bytes(b'{"format": "probekit-probe", "layer": "\xff\xfe"}')
    elif kind == "config-a-list":
        config.write_text("[1, 2]")
    elif kind == "store-empty":
        _edit(config, lambda c: c.update(store={}))
    elif kind == "layer-a-string":  # was iterated character by character: "4" read layer 4 and "15" layers 1 and 5
        _edit(config, lambda c: (c.update(layer="4"), c.pop("layers")))
    elif kind == "weights-missing":
        (ck / "weights.safetensors").unlink()
        return "weights.safetensors"
    elif kind == "metrics-lack-a-field":
        _edit(ck / "metrics.json", lambda m: m["valid"]["probe"].pop("auroc"))
        return "metrics.json"
    else:
        raise AssertionError(kind)
    return "config.json"


DAMAGES = ["config-not-json", "config-not-utf8", "config-a-list", "store-empty", "layer-a-string", "weights-missing", "metrics-lack-a-field"]
COMMANDS = ["eval", "filter", "generate", "steer", "goal", "sweep"]


def command(name: str, w: World, ck: Path, out: Path, model: str = "tiny") -> list:
    """The command line of `name` reading checkpoint `ck` (for sweep: the sweep folder holding it) with the states of `model`."""
    store, folder = w.stores[model], w.models[model]
    return {
        "eval": ["eval", "--ckpt", ck, "--store", store, "--out", out, "--n-boot", "20", "--no-progress"],
        "filter": ["filter", "--ckpt", ck, "--store", store, "--out", out, "--no-plots", "--random-seeds", "1", "--no-progress"],
        "generate": ["generate", w.prompts, "--out", out, "--model", folder, "--filter", ck, "--threshold", "0", "--samples", "2", *DECODE],
        "steer": ["steer", w.prompts, "--ckpt", ck, "--out", out, "--model", folder, "--beams", "1", "--candidates", "2", *DECODE],
        "goal": ["goal", "--ckpt", ck, "--from", w.examples, "--name", "mine", "--out", out, "--model", folder, "--template", "raw"],
        "sweep": ["sweep", "--store", store, "--out", ck, *SWEEP_ARGS],
    }[name]


# sweep takes no checkpoint and no model from the user: a run fitted on another store is another run, and is fitted again
CASES = [(name, case) for name in COMMANDS for case in ("intact", *DAMAGES, "other-model", "other-width")
         if not (name == "sweep" and case.startswith("other-"))]


@pytest.mark.parametrize("name,case", CASES)
def test_every_command_refuses_a_damaged_checkpoint_or_another_models_states(world, name, case, tmp_path, monkeypatch, capsys):
    target = tmp_path / "sweep" if name == "sweep" else tmp_path / "ck"
    shutil.copytree(world.sweep if name == "sweep" else world.ckpt, target)
    ck = target / "runs" / world.run if name == "sweep" else target
    bad_file = damage(ck, case) if case in DAMAGES else None
    model = {"other-model": "other", "other-width": "wide"}.get(case, "tiny")
    code, err = run_cli(monkeypatch, capsys, *command(name, world, target, tmp_path / "out", model))
    err = without_load_bar(err)
    if case == "intact":
        assert code == 0, err
    elif bad_file is None:  # one line naming both models: the checkpoint's, and the one whose states were offered (live or stored)
        assert_one_line_error(code, err, str(ck), f"'{world.models['tiny']}'", f"'{world.models[model]}'")
    else:
        assert_one_line_error(code, err, str(ck / bad_file))


# ---- defect 3: the live-state commands check (checkpoint, model) as eval and filter check (checkpoint, store) -----
def test_generate_steer_and_goal_refuse_a_model_the_probe_was_not_trained_on(world, tmp_path):
    """A probe of another model of the same width used to run (exit 0) on states it never saw; of another width, a matmul traceback."""
    from probekit.data.prompts import read_prompts
    from probekit.generate.config import GenerateConfig, SteerConfig
    from probekit.generate.custom_goals import goal_from_examples
    from probekit.generate.generation import generate
    from probekit.generate.steering import steer
    from probekit.generate.stopping import OnlineStop
    from probekit.models import load_model
    from probekit.probe.checkpoint import check_model, load_checkpoint

    ck = load_checkpoint(world.ckpt)
    prompts, _ = read_prompts(world.prompts)
    gen = GenerateConfig(model="unused", samples=2, max_new_tokens=4, template="raw")
    check_model(ck, load_model(str(world.models["tiny"]), device="cpu"))  # its own model passes
    for other in ("other", "wide"):
        loaded = load_model(str(world.models[other]), device="cpu")
        runs = {"generate": lambda lm: generate(prompts, tmp_path / "generate", gen, stop=OnlineStop(ck, 0.0), loaded=lm),
                "steer": lambda lm: steer(prompts, tmp_path / "steer", gen, SteerConfig(beams=1, candidates=2), ck, loaded=lm),
                "goal": lambda lm: goal_from_examples(ck, world.examples, lm, "raw")}
        for what, run in runs.items():
            with pytest.raises(ProbekitError, match="was trained on states of model") as exc:
                run(loaded)
            assert str(world.models["tiny"]) in str(exc.value) and str(world.models[other]) in str(exc.value), (what, exc.value)
    assert not (tmp_path / "generate" / "trajectories.jsonl").exists() and not (tmp_path / "steer" / "trajectories.jsonl").exists()


# ---- defect 4: generate --threshold FILTER_DIR takes a threshold only where it means the same ------------------------
@pytest.fixture(scope="module")
def filtered(world, tmp_path_factory):
    """Filter outputs of the checkpoint on its store: Q (auto threshold) and reward; and a Q one of the other probe."""
    from probekit.filter.config import FilterConfig
    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    root = tmp_path_factory.mktemp("filtered")
    store = Store(world.stores["tiny"])
    opts = {"threshold": "auto", "plots": False, "random_seeds": 1}
    for name, ck, signal in (("q", world.ckpt, "q"), ("reward", world.ckpt, "reward"), ("q-other-probe", world.ckpt2, "q")):
        filter_store(load_checkpoint(ck), store, root / name, FilterConfig(signal=signal, **opts))
    return root


def test_generate_threshold_from_a_filter_output_must_be_a_q_threshold_of_the_same_probe_goal_and_skip_first(world, filtered, tmp_path,
                                                                                                            monkeypatch, capsys):
    base = ["generate", world.prompts, "--model", world.models["tiny"], "--filter", world.ckpt, "--samples", "2", *DECODE]
    chosen = json.loads((filtered / "q" / "metrics.json").read_text())["chosen_threshold"]
    code, err = run_cli(monkeypatch, capsys, *base, "--out", tmp_path / "ok", "--threshold", filtered / "q")
    assert code == 0, err
    online = json.loads((tmp_path / "ok" / "generation.json").read_text())["online_filter"]
    assert online["threshold"] == chosen and online["threshold_chosen_on"] == str(filtered / "q" / "metrics.json")

    null_threshold, text_threshold, plain, with_frac = tmp_path / "null", tmp_path / "text", tmp_path / "plain", tmp_path / "frac"
    plain.mkdir()  # a folder that is no probekit output (not --out's parent: that is refused as an input holding --out)
    for folder, value in ((null_threshold, None), (text_threshold, "0.1")):
        shutil.copytree(filtered / "q", folder)
        _edit(folder / "metrics.json", lambda m, value=value: m.update(chosen_threshold=value))
    shutil.copytree(filtered / "q", with_frac)  # chosen with --skip-frac: a drop rule that needs the final length
    _edit(with_frac / "metrics.json", lambda m: m.update(skip_frac=0.3))
    refused = [
        ([world.ckpt], "expected a number, auto, or a `probekit filter` output folder"),  # a fit folder has a metrics.json too
        ([plain], "expected a number, auto, or a `probekit filter` output folder"),
        ([filtered / "reward"], "on the reward"),
        ([filtered / "q-other-probe"], f"chosen for checkpoint {world.ckpt2}, not for --filter {world.ckpt}"),
        ([filtered / "q", "--skip-first", "3"], "pass --skip-first 5"),
        ([filtered / "q", "--goal", "kmeans"], "pass --goal mean"),
        ([null_threshold], "field 'chosen_threshold'"),
        ([text_threshold], "field 'chosen_threshold'"),
        ([with_frac], "--skip-frac 0.3, which online stopping cannot apply"),
    ]
    for i, (args, needle) in enumerate(refused):
        code, err = run_cli(monkeypatch, capsys, *base, "--out", tmp_path / f"o{i}", "--threshold", *args)
        assert_one_line_error(code, err, needle)
        assert not (tmp_path / f"o{i}").exists()


# ---- defect 5: steer --goal-from takes only a goal built with its checkpoint and layers -------------------------------
def test_steer_refuses_a_goal_folder_of_another_checkpoint_or_layer_or_a_damaged_one(world, tmp_path, monkeypatch, capsys):
    from safetensors.numpy import save_file

    def goal(ck: Path, out: Path) -> Path:
        code, err = run_cli(monkeypatch, capsys, "goal", "--ckpt", ck, "--from", world.examples, "--name", "mine", "--out", out,
                            "--model", world.models["tiny"], "--template", "raw")
        assert code == 0, err
        return out

    steer_args = ["steer", world.prompts, "--ckpt", world.ckpt, "--model", world.models["tiny"], "--goal", "mine",
                  "--beams", "1", "--candidates", "2", *DECODE]
    own = goal(world.ckpt, tmp_path / "own")
    code, err = run_cli(monkeypatch, capsys, *steer_args, "--out", tmp_path / "ok", "--goal-from", own)
    assert code == 0, err
    other_probe = goal(world.ckpt2, tmp_path / "other-probe")
    other_layer = tmp_path / "other-layer"
    shutil.copytree(own, other_layer)
    _edit(other_layer / "goal.json", lambda g: g.update(layer=2, layers=[2]))
    damaged_json = tmp_path / "damaged-json"
    shutil.copytree(own, damaged_json)
    (damaged_json / "goal.json").write_text('{"name": "mine", ')
    wrong_shape = tmp_path / "wrong-shape"
    shutil.copytree(own, wrong_shape)
    save_file({"mine": np.ones((1, 5), np.float32)}, str(wrong_shape / "goal.safetensors"))  # the probe's φ has 16 dimensions
    for i, (folder, needles) in enumerate([
        (other_probe, [str(other_probe / "goal.json"), f"built with checkpoint {world.ckpt2}", f"not with {world.ckpt}"]),
        (other_layer, [str(other_layer / "goal.json"), "(layers [2])", "(layers [4])"]),
        (damaged_json, [str(damaged_json / "goal.json"), "malformed JSON"]),
        (wrong_shape, [str(wrong_shape / "goal.safetensors"), "shape [1, 5]", "[K, 16]"]),
    ]):
        code, err = run_cli(monkeypatch, capsys, *steer_args, "--out", tmp_path / f"o{i}", "--goal-from", folder)
        assert_one_line_error(code, err, *needles)
        assert not (tmp_path / f"o{i}").exists()


# ---- defect 7: steer checks the model's context as generate does, with the one check ----------------------------------
def test_steer_refuses_a_prompt_past_the_models_context_as_generate_does(world, tmp_path):
    from probekit.data.prompts import Prompt
    from probekit.generate.config import GenerateConfig, SteerConfig
    from probekit.generate.generation import generate
    from probekit.generate.steering import steer
    from probekit.models import load_model
    from probekit.probe.checkpoint import load_checkpoint

    loaded = load_model(str(world.models["tiny"]), device="cpu")  # max_position_embeddings 512
    long = [Prompt("long", "apples " * 500)]
    gen = GenerateConfig(model="unused", samples=1, max_new_tokens=20, template="raw")
    with pytest.raises(ProbekitError, match="exceed the model's context of 512 tokens") as by_steer:
        steer(long, tmp_path / "s", gen, SteerConfig(beams=1, candidates=2), load_checkpoint(world.ckpt), loaded=loaded)
    with pytest.raises(ProbekitError) as by_generate:
        generate(long, tmp_path / "g", gen, loaded=loaded)
    assert str(by_steer.value) == str(by_generate.value)
    assert not (tmp_path / "s" / "trajectories.jsonl").exists()


# ---- defect 8: a checkpoint's layers, widths and goal shapes are checked when it is opened ----------------------------
@pytest.mark.parametrize("edit,needles", [
    (lambda c: c.update(layer=0, layers=[0]), ["config.json", "field 'layer'", "greater than or equal to 1"]),  # hooked the last block
    (lambda c: (c.update(layer="4"), c.pop("layers")), ["config.json", "field 'layer'", 'found "4"']),
    (lambda c: c.update(layers="4"), ["config.json", "field 'layers'", "valid list"]),  # "15" read layers 1 and 5
    (lambda c: c.update(layer=99, layers=[99]), ["config.json", "layer 99 is not among the training store's layers [2, 4]"]),
    (lambda c: c.update(layers=[]), ["config.json", "field 'layers'", "at least 1 item"]),
    (lambda c: c.update(layer="abc"), ["config.json", "field 'layer'", 'found "abc"']),
    (lambda c: c.update(layer=2), ["config.json", "layer 2 is not one of layers [4]"]),
    (lambda c: c.update(layers=[4, 2]), ["config.json", "layers [4, 2] are 2, but the network reads 1"]),
    (lambda c: c["model"].update(rep_size=8), ["weights.safetensors", "has shape [16,", "needs [8,"]),
    (lambda c: c["model"].update(hidden_size=64), ["config.json", "store.hidden_size 32 differs from model.hidden_size 64"]),
], ids=["zero", "a-string", "layers-a-string", "beyond-the-store", "empty", "not-a-number", "not-among-layers", "more-than-the-network",
        "weights-of-another-width", "another-hidden-size"])
def test_a_checkpoints_layers_and_widths_are_checked_when_it_is_opened(world, tmp_path, edit, needles):
    from probekit.probe.checkpoint import load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(world.ckpt, ck)
    _edit(ck / "config.json", edit)
    with pytest.raises(ProbekitError, match="^damaged checkpoint: ") as exc:
        load_checkpoint(ck)
    for needle in needles:
        assert needle in str(exc.value), (needle, str(exc.value))


@pytest.mark.parametrize("goals,needle", [
    ({"mean": np.ones((1, 15), np.float32)}, "goal 'mean' has shape [1, 15]"),
    ({"mean": np.ones(16, np.float32)}, "goal 'mean' has shape [16]"),
    ({"mean": np.ones((0, 16), np.float32)}, "goal 'mean' has shape [0, 16]"),
    ({"mean": np.ones((1, 16), np.float32), "kmeans": np.ones((3, 4), np.float32)}, "goal 'kmeans' has shape [3, 4]"),
    ({"kmeans": np.ones((3, 16), np.float32)}, "has no 'mean' goal"),
    ({"mean": np.full((1, 16), np.nan, np.float32)}, "NaN or infinite"),
])
def test_a_checkpoints_goal_prototypes_must_be_k_by_rep(world, tmp_path, goals, needle):
    from safetensors.numpy import save_file

    from probekit.probe.checkpoint import load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(world.ckpt, ck)
    save_file(goals, str(ck / "goals.safetensors"))
    with pytest.raises(ProbekitError, match="^damaged checkpoint: ") as exc:
        load_checkpoint(ck)
    assert str(ck / "goals.safetensors") in str(exc.value) and needle in str(exc.value), str(exc.value)


def test_a_layer_beyond_the_models_depth_is_refused_before_any_hook(world, tmp_path):
    """A config whose layers the training store lists (so it loads) but the model has no block for: refused, not a hook on nothing."""
    from probekit.models import load_model
    from probekit.probe.checkpoint import check_model, load_checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(world.ckpt, ck)
    _edit(ck / "config.json", lambda c: (c.update(layer=9, layers=[9]), c["store"].update(layers=[2, 4, 9]), c.pop("inputs")))
    with pytest.raises(ProbekitError, match=r"reads layer 9, but model .* has layers 1\.\.4"):
        check_model(load_checkpoint(ck), load_model(str(world.models["tiny"]), device="cpu"))


# ---- defect 15 (checkpoints): what would not load is never written; a damaged sweep run is named, not refit -----------
def test_save_checkpoint_refuses_what_load_checkpoint_would_refuse(world, tmp_path):
    from probekit.outputs import claim_output
    from probekit.probe.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(world.ckpt)
    out = claim_output(tmp_path / "ck", "fit")
    for config, needle in (({"layer": 4, "store": {}}, "field 'store.path'"),
                           ({"layer": "4", "store": ck.config["store"]}, "field 'layer'")):
        with pytest.raises(ProbekitError, match=needle):
            save_checkpoint(out, ck.model, config, ck.goals, ck.split, ck.metrics)
    with pytest.raises(ProbekitError, match=r"metrics.json: field 'valid.probe.auroc'"):
        save_checkpoint(out, ck.model, ck.config, ck.goals, ck.split, {"valid": {"probe": {"pairwise_accuracy": ck.metrics["valid"]["probe"]["pairwise_accuracy"]}}})
    assert not (tmp_path / "ck" / "config.json").exists()
    saved = save_checkpoint(out, ck.model, {k: ck.config[k] for k in ("fit", "layer", "layers", "store")}, ck.goals, ck.split, ck.metrics)
    assert load_checkpoint(saved.path).fingerprint == ck.fingerprint  # the same probe: a copy is recognised as it


def test_a_sweep_refuses_a_damaged_run_and_refits_one_that_never_finished(world, tmp_path, monkeypatch, capsys):
    """Before: a run whose metrics.json lacked a field was a KeyError traceback; a damaged config.json was refit unseen."""
    sweep = tmp_path / "sweep"
    shutil.copytree(world.sweep, sweep)
    run = sweep / "runs" / world.run
    _edit(run / "metrics.json", lambda m: m["valid"]["probe"]["pairwise_accuracy"].pop("lo"))
    code, err = run_cli(monkeypatch, capsys, "sweep", "--store", world.stores["tiny"], "--out", sweep, *SWEEP_ARGS)
    assert_one_line_error(code, err, f"sweep: run {world.run}: damaged checkpoint: {run / 'metrics.json'}: field 'valid.probe.pairwise_accuracy.lo'",
                          f"remove {run} to fit that run again")
    (run / "config.json").unlink()  # as a save interrupted before its last file: the run is fitted again
    code, err = run_cli(monkeypatch, capsys, "sweep", "--store", world.stores["tiny"], "--out", sweep, *SWEEP_ARGS)
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["valid"]["probe"]["pairwise_accuracy"]["lo"] is not None
