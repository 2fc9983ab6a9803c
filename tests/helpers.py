"""Plain helpers that several test modules share: planted stores and quick fits, the CLI runner and its
one-line-error check, small file and hash helpers, and the extraction tests' trajectories and store comparison.

Shared fixtures live in tests/conftest.py (pytest finds them without an import); the store writer is
tests/store_factory.py and the tiny model builder tests/tiny_model.py. No test module imports another
(tests/test_test_layout.py checks it): what two of them need goes here.

Heavy imports (torch through the pipeline, h5py) sit inside the functions that need them, so a module that only
runs the CLI does not load them.
"""

from __future__ import annotations

import socket
import dataclasses
import hashlib
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from probekit.config import FitConfig
    from probekit.data.schema import Trajectory

# ---- planted stores and quick fits (tests/test_fit.py, test_evaluate.py, test_hostile_outputs.py, test_store_integrity.py, ...) ----
PLANTED_HIDDEN = 16  # the width of planted_arrays' states


def planted_arrays(n_groups: int = 30, per: int = 4, hidden: int = PLANTED_HIDDEN, seed: int = 0, amp: float = 3.0):
    """Correct trajectories drift along u over the completion; incorrect ones switch to v after their error token.

    Dimension 0 is a huge outlier feature (×100, +50), like real LM states.
    Lengths are independent of the labels.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=hidden)
    u /= np.linalg.norm(u)
    v = rng.normal(size=hidden)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    states, groups, labels, errors = [], [], [], []
    for g in range(n_groups):
        for j in range(per):
            T = int(rng.integers(8, 17))
            label = int(j < per // 2)
            t = np.arange(T)[:, None]
            x = rng.normal(size=(T, hidden)) + amp * (t + 1) / T * u
            err = -1
            if not label:
                err = int(rng.integers(T // 4, 3 * T // 4))
                x = np.where(t >= err, x - amp * (t + 1) / T * u + amp * v, x)
            x[:, 0] = x[:, 0] * 100 + 50
            states.append(x.astype(np.float32))
            groups.append(f"g{g:02d}")
            labels.append(label)
            errors.append(err)
    return states, groups, labels, errors


def planted_store(path: Path, **kwargs) -> Path:
    from tests.store_factory import make_store

    model_name = kwargs.pop("model_name", "test-model")
    layer = kwargs.pop("layer", 2)
    states, groups, labels, errors = planted_arrays(**kwargs)
    return make_store(path, states, groups, labels, error_tokens=errors, layer=layer, model_name=model_name)


def answered_store(path: Path, n_groups: int = 24, seed: int = 0, shorter_better: bool = False) -> Path:
    """A store of 8-wide states with answers (1 = correct), whose label 1 trajectories carry a direction (and, optionally,
    are shorter): what `filter` needs besides a probe."""
    from tests.store_factory import make_store

    rng = np.random.default_rng(seed)
    states, groups, labels, answers = [], [], [], []
    for g in range(n_groups):
        for j in range(4):
            label = int(j < 2)
            T = int(rng.integers(8, 14)) + (0 if (label or not shorter_better) else 10)
            x = rng.normal(size=(T, 8)).astype(np.float32)
            x[:, 0] += 2.0 if label else -2.0
            states.append(x)
            groups.append(f"g{seed}-{g}")
            labels.append(label)
            answers.append("1" if label else str(2 + j))
    return make_store(path, states, groups, labels, answers=answers)


def fast_config(**kw) -> FitConfig:
    from probekit.config import FitConfig

    return FitConfig().vary(**{**dict(widths=(32,), rep_size=16, epochs=10, lr=3e-3, n_boot=200), **kw})


def fit(store: Path, out: Path, **kw):
    """A quick fit of the planted store at `store` into `out` (options by field name)."""
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    return fit_probe(Store(store), out, fast_config(**kw))


def planted_store_record(loaded, layers) -> dict:
    """A checkpoint's "store" record for a probe planted by hand on the live states of `loaded` (no store was extracted):
    the model's identity and width, which `check_model` compares with the model a command loads."""
    return {"path": "(planted: no store)", "model_name": loaded.name, "model_sha256": loaded.file_sha256, "hidden_size": loaded.hidden_size,
            "cache_key": "planted", "layers": list(layers)}


_CACHE: dict = {}


def trained(tmp_path_factory) -> tuple[Path, object]:
    """One planted store and one probe trained on it, shared by the test modules of one session."""
    if "ckpt" not in _CACHE:
        root = tmp_path_factory.mktemp("planted")
        store = planted_store(root / "store")
        _CACHE["store"] = store
        _CACHE["ckpt"] = fit(store, root / "ckpt", goal_prototypes=3)
    return _CACHE["store"], _CACHE["ckpt"]


def tiny_chat_probe(model_dir: Path, root: Path, **fit_kw) -> Path:
    """A chat-template probe at layer 2 of the tiny model: twelve toy trajectories (three per prompt) extracted in float32
    into `root/store` and fitted into `root/ckpt` (options by field name); the checkpoint's path."""
    import dataclasses

    import torch

    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract

    base = toy_trajectories(12)
    write_trajectories(root / "data.jsonl", [dataclasses.replace(t, prompt=base[3 * (i // 3)].prompt, error_char=None) for i, t in enumerate(base)])
    extract(ExtractOptions(trajectories=root / "data.jsonl", out=root / "store", model=str(model_dir), layers="2",
                           template="chat", dtype="float32", max_length=96, device="cpu"))
    torch.manual_seed(0)
    return fit(root / "store", root / "ckpt", **{"layer": 2, "n_boot": 20, **fit_kw}).path


# ---- the console entry point (tests/test_hostile_outputs.py, test_fetch.py, test_math_data.py, ...) ---------------
def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """(exit status, stderr) of `probekit ARGS` through the console script's main()."""
    from probekit_cli.main import main

    monkeypatch.setattr(sys, "argv", ["probekit", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0), capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), err
    text = " ".join(ln.strip() for ln in lines)  # rich wraps long lines on narrow terminals
    for n in needles:
        assert n in text, (n, err)


# ---- files and hashes (tests/test_fetch.py, test_math_data.py) -----------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(folder: Path) -> list[str]:
    """Every file (temporary ones included) below `folder`."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- extraction (tests/test_extract.py, test_hostile_inputs.py, test_store_integrity.py) ----------------------------------------------------
def extract_options(traj_file: Path, out: Path, **kw):
    """`ExtractOptions` for the tiny model: layers 1 and 2, 4 trajectories a shard, float32 states; `kw` changes fields."""
    from probekit.extract.options import ExtractOptions

    return ExtractOptions(**{**dict(trajectories=traj_file, out=out, model="tiny", layers="1,2", shard_size=4, dtype="float32"), **kw})


def toy_trajectories(n: int = 11) -> list[Trajectory]:
    from probekit.data.schema import Trajectory

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        steps = " ".join(f"Step {k}: {a} + {k} = {a + k}." for k in range(1, 2 + i % 4))
        out.append(
            Trajectory(
                id=f"t{i}", group=f"g{i // 3}", prompt=f"Tom has {a} apples and buys {b} more. " * (1 + i % 3),
                completion=f"{steps} A: {a + b}", label=i % 2, answer=str(a + b),
                error_char=5 if i % 2 == 0 else None,
            )
        )
    return out


def shared_prompt_file(path: Path) -> Path:
    """Four questions with three samples each (one prompt per group, as best-of-n data has), and one lone question."""
    import dataclasses

    from probekit.data.schema import write_trajectories

    base = toy_trajectories(15)
    out = [dataclasses.replace(t, prompt=base[3 * (i // 3)].prompt) for i, t in enumerate(base[:12])] + base[12:13]
    write_trajectories(path, out)
    return path


def read_store(path: Path) -> dict:
    """Every array of every shard, for exact store comparisons."""
    import h5py

    out = {}
    for shard in sorted(path.glob("shard-*.h5")):
        with h5py.File(shard, "r") as fh:
            fh.visititems(lambda name, obj: out.__setitem__(f"{shard.name}/{name}", obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_store(a: Path, b: Path, atol: float = 0.0) -> None:
    ra, rb = read_store(a), read_store(b)
    assert ra, f"{a}: no shards to compare"  # two missing stores are not the same store
    assert ra.keys() == rb.keys()
    for key in ra:
        if ra[key].dtype.kind == "f":
            np.testing.assert_allclose(ra[key], rb[key], atol=atol, rtol=0, err_msg=key)
        else:
            assert np.array_equal(ra[key], rb[key]), key


# ---- probes on a generated store, online stopping and steering (tests/test_generation.py, test_steering.py, -------
# ---- test_architectures.py) ---------------------------------------------------------------------------------------
def random_probe(store_path: Path, layer: int, folder: Path):
    """A random probe over `layer` of the store (normalised by its states, one random goal "mean"), saved as a
    checkpoint whose test split is every group of the store."""
    import torch

    from probekit.outputs import claim_output
    from probekit.probe.checkpoint import save_checkpoint, store_info
    from probekit.probe.network import ProbeModel
    from probekit.store import Store

    store = Store(store_path)
    torch.manual_seed(0)
    model = ProbeModel(store.hidden_size, "mlp", (16,), rep_size=8)
    x = store.load_layer(layer)
    model.set_normalization(x.mean(0), x.std(0))
    goals = {"mean": np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)}
    split = {"train": [], "valid": [], "test": sorted(set(store.meta.group))}
    return save_checkpoint(claim_output(folder, "fit"), model, {"layer": layer, "store": store_info(store)}, goals, split, {})


def assert_online_stopping_decides_what_the_filter_decides(unfiltered, probe, prompts, config, loaded, out: Path):
    """`generate --filter` at a threshold that stops about half of the samples: each sample is stopped where the filter's rule,
    applied after the fact to the unfiltered run's store (`unfiltered`, same prompts and config), stops it; a
    stopped sample's stored rows end there, the others are the unfiltered samples, and the tokens saved are the
    filter's. Returns the online run."""
    from probekit.filter.early_stop import apply_threshold
    from probekit.generate.generation import generate
    from probekit.generate.stopping import OnlineStop
    from probekit.probe.scoring import Scorer, score_store
    from probekit.store import Store

    store = Store(unfiltered.out / "store")
    scores = score_store(store, Scorer.from_checkpoint(probe), probe.layer)
    eligible = np.where(scores.positions >= 2, scores.q["mean"], np.inf)
    lowest = np.sort(np.minimum.reduceat(eligible, scores.offsets[:-1]))  # each sample's lowest Q where stopping may apply
    half = int(np.isfinite(lowest).sum()) // 2
    # between two samples' lowest Q: stops about half of the samples whatever the model, and no Q sits on the threshold
    threshold = float(lowest[half - 1] + lowest[half]) / 2
    offline = apply_threshold(scores.offsets, scores.positions, scores.q["mean"], store.meta.completion_tokens, threshold, skip_first=2)
    assert 0 < offline.dropped.sum() < len(store), "the threshold should stop some samples and keep others"

    online = generate(prompts, out, config, stop=OnlineStop(probe, threshold, skip_first=2), loaded=loaded)
    dropped_at = np.array([t.meta.get("dropped_at", -1) for t in online.trajectories])
    np.testing.assert_array_equal(dropped_at, offline.first_drop_position)
    on_store = Store(out / "store")
    for i, t in enumerate(online.trajectories):
        if dropped_at[i] >= 0 and not t.meta["fallback"]:  # stopped samples really stopped (unless their group fell back)
            assert on_store.meta.completion_tokens[i] == dropped_at[i] + 1 and t.answer is None and t.label is None
        else:
            assert t.completion == unfiltered.trajectories[i].completion
    stats = online.stats
    saved = int(offline.saved_tokens.sum())
    assert stats["tokens_generated"] - stats["tokens_resumed_for_fallback"] == int(store.meta.completion_tokens.sum()) - saved
    return online


def extracted_last_q(trajectories, ckpt, loaded, folder: Path) -> np.ndarray:
    """The Q toward goal "mean" that `extract` (float32, last positions, raw template) and the scorer give the last
    token of each trajectory: what steer must report for a beam it decoded with its KV cache."""
    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.probe.scoring import Scorer, score_store
    from probekit.store import Store

    write_trajectories(folder / "beams.jsonl", trajectories)
    extract(ExtractOptions(trajectories=folder / "beams.jsonl", out=folder / "beams-store", layers=str(ckpt.layer), template="raw",
                           positions="last", dtype="float32"), loaded=loaded)
    scores = score_store(Store(folder / "beams-store"), Scorer.from_checkpoint(ckpt), ckpt.layer)
    return scores.last(scores.q["mean"])


@dataclasses.dataclass
class RewardWorld:
    """Probes fitted on stores the tiny model extracted, for the reward-model tests (API, score, baseline, serve, TRL)."""

    root: Path
    model: Path
    trajectories: list
    stores: dict  # template -> store path
    ckpts: dict  # name -> checkpoint path


def reward_world(tiny_model_dir: Path, tmp_path_factory) -> RewardWorld:
    """Best-of-n toy data (three completions per prompt, one prompt longer than max_length 96) extracted with the chat
    and the raw template (layers 2 and 4, float16), and probes on it: last-token (with k-means goals), mean-pooled,
    two layers side by side, and a raw-template one. Built once per session."""
    if "reward" not in _CACHE:
        import torch

        from probekit.data.schema import write_trajectories
        from probekit.extract.options import ExtractOptions
        from probekit.extract.run import extract
        from probekit.models import load_model

        root = tmp_path_factory.mktemp("reward-world")
        base = toy_trajectories(24)
        trajs = [dataclasses.replace(t, prompt=base[3 * (i // 3)].prompt, error_char=None) for i, t in enumerate(base)]
        trajs[-1] = dataclasses.replace(trajs[-1], prompt="A very long question. " * 40)
        write_trajectories(root / "data.jsonl", trajs)
        loaded = load_model(str(tiny_model_dir), device="cpu")
        stores = {}
        for template in ("chat", "raw"):
            stores[template] = root / f"store-{template}"
            extract(ExtractOptions(trajectories=root / "data.jsonl", out=stores[template], layers="2,4", template=template,
                                   dtype="float16", max_length=96), loaded=loaded)
        torch.manual_seed(0)
        ckpts = {
            "last": fit(stores["chat"], root / "ckpt-last", layer=4, n_boot=20, goal_prototypes=3).path,
            "mean": fit(stores["chat"], root / "ckpt-mean", layer=4, n_boot=20, pooling="mean").path,
            "concat": fit(stores["chat"], root / "ckpt-concat", features="concat", feature_layers=(2, 4), n_boot=20).path,
            "raw": fit(stores["raw"], root / "ckpt-raw", layer=2, n_boot=20).path,
        }
        _CACHE["reward"] = RewardWorld(root, tiny_model_dir, trajs, stores, ckpts)
    return _CACHE["reward"]


def closed_port_url() -> str:
    """A loopback URL where nothing listens (a port bound, then released): a download that cannot connect."""
    with socket.socket() as s:  # bound then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class ProgressRecorder:
    """A `probekit.progress` receiver that keeps every event: ("task", description, total, unit), ("advance", n,
    whether it came from the main thread), ("close",)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def task(self, description, total, unit=""):
        self.events.append(("task", description, total, unit))
        return self

    def advance(self, n=1, note=""):
        self.events.append(("advance", n, threading.current_thread() is threading.main_thread()))

    def close(self):
        self.events.append(("close",))
