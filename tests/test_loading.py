"""Loading what users load: a saved folder of any covered architecture through extract, fit, eval and RewardProbe;
`--device auto` splitting a model that exceeds the device's memory (accelerate, layers offloaded to the disk) with the
plain load's states; and a one-line estimate when a model does not fit at all.

The machine's memory is made small through PROBEKIT_MAX_MEMORY (what a user sets to cap probekit), never by mocking
torch: the weights really are offloaded and read back, and the refusals come from the real estimate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from probekit.data.schema import write_trajectories
from probekit.errors import ProbekitError
from probekit.extract.forward import forward_layers
from probekit.extract.run import extract
from probekit.models import load_model
from probekit.placement import ENV, parse_limits, weights_size
from tests.helpers import assert_one_line_error, assert_same_store, extract_options, run_cli, toy_trajectories
from tests.tiny_model import OMIT, build_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two families whose blocks and configs differ from Llama's (Qwen2 carries an unused sliding window; GPT-NeoX names its
# blocks gpt_neox.layers): the folder path is the same for every family tests/test_architectures.py covers.
FOLDERS = {"qwen2": ("Qwen2Config", {"sliding_window": 131072, "use_sliding_window": False}),
           "gpt-neox": ("GPTNeoXConfig", {"num_key_value_heads": OMIT})}


def shared_prompt_data(path):
    """Twelve toy trajectories, three per prompt (so pairs exist within each group)."""
    base = toy_trajectories(12)
    write_trajectories(path, [dataclasses.replace(t, prompt=base[3 * (i // 3)].prompt, error_char=None) for i, t in enumerate(base)])
    return path, base


@pytest.mark.parametrize("family", list(FOLDERS))
def test_a_saved_folder_of_another_family_runs_through_extract_fit_eval_and_reward_probe(family, tmp_path, monkeypatch, capsys):
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.probe.scoring import Scorer, score_store
    from probekit.reward import RewardProbe
    from probekit.store import Store

    config_class, fields = FOLDERS[family]
    folder = build_tiny_model(tmp_path / "model", config_class=config_class, **fields)
    data, _ = shared_prompt_data(tmp_path / "data.jsonl")
    steps = [["extract", data, "--out", tmp_path / "store", "--model", folder, "--layers", "2", "--template", "raw", "--dtype", "float32",
              "--model-dtype", "float32", "--device", "cpu", "--no-progress"],
             ["fit", "--store", tmp_path / "store", "--out", tmp_path / "ckpt", "--layer", "2", "--widths", "16", "--rep-size", "8",
              "--epochs", "2", "--n-boot", "20", "--no-progress"],
             ["eval", "--ckpt", tmp_path / "ckpt", "--out", tmp_path / "eval", "--n-boot", "20", "--no-progress"]]
    for step in steps:
        code, err = run_cli(monkeypatch, capsys, *step)
        assert code == 0, (step[0], err)
    assert any((tmp_path / "eval").iterdir())

    ckpt = load_checkpoint(tmp_path / "ckpt")
    scores = score_store(Store(tmp_path / "store"), Scorer.from_checkpoint(ckpt, kinds=["mean"]), ckpt.layers)
    rp = RewardProbe.load(tmp_path / "ckpt", device="cpu")
    assert rp.loaded.source == str(folder.resolve())
    from probekit.data.schema import read_trajectories

    trajectories, _ = read_trajectories(data)
    got = rp.score([t.prompt for t in trajectories], [t.completion for t in trajectories])
    np.testing.assert_allclose(got.rewards, scores.last(scores.reward), rtol=2e-3, atol=2e-3)


def _weights_bytes(folder) -> int:
    from transformers import AutoConfig

    counted = weights_size(AutoConfig.from_pretrained(folder), torch.float32)
    assert counted is not None
    return counted[1]


def test_device_auto_splits_a_model_bigger_than_memory_across_memory_and_disk_with_the_plain_states(tiny_model_dir, tmp_path, monkeypatch):
    plain = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert plain.device_map is None
    monkeypatch.setenv(ENV, f"cpu={int(0.7 * _weights_bytes(tiny_model_dir))}")
    split = load_model(str(tiny_model_dir), device="auto", dtype="float32", cache_dir=tmp_path / "cache")
    placed = set(split.device_map.values())
    assert placed == {"cpu", "disk"}, split.device_map  # some blocks in memory, the rest offloaded
    assert split.device == torch.device("cpu") and split.num_layers == plain.num_layers

    ids = torch.tensor([plain.tokenizer("Tom has 12 apples. Step 1: 3 * 4 = 12. A: 24")["input_ids"]] * 2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row too
    layers = list(range(1, plain.num_layers + 1))
    a, b = forward_layers(plain.model, ids, mask, layers), forward_layers(split.model, ids, mask, layers)
    for layer in layers:
        assert torch.equal(a[layer], b[layer]), layer

    data, _ = shared_prompt_data(tmp_path / "data.jsonl")
    extract(extract_options(data, tmp_path / "plain", layers="1,4", model_dtype="float32"), loaded=plain)
    extract(extract_options(data, tmp_path / "split", layers="1,4", model_dtype="float32"), loaded=split)
    assert_same_store(tmp_path / "plain", tmp_path / "split")


def test_a_model_bigger_than_an_explicit_device_is_refused_in_one_line_naming_device_auto(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV, f"cpu={_weights_bytes(tiny_model_dir) // 2}")
    data, _ = shared_prompt_data(tmp_path / "data.jsonl")
    code, err = run_cli(monkeypatch, capsys, "extract", data, "--out", tmp_path / "store", "--model", tiny_model_dir, "--device", "cpu",
                        "--model-dtype", "float32", "--no-progress")
    assert_one_line_error(code, err, str(tiny_model_dir.resolve()), "parameters x 4 bytes in float32", "--device auto")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("shard-*"))


def test_a_model_that_fits_nowhere_gets_the_estimate_in_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from transformers import AutoConfig

    params, size = weights_size(AutoConfig.from_pretrained(tiny_model_dir), torch.float32) or (0, 0)
    monkeypatch.setenv(ENV, f"cpu={size // 3},disk={size // 3}")
    data, _ = shared_prompt_data(tmp_path / "data.jsonl")
    code, err = run_cli(monkeypatch, capsys, "extract", data, "--out", tmp_path / "store", "--model", tiny_model_dir,
                        "--model-dtype", "float32", "--no-progress")
    assert_one_line_error(code, err, "will not fit", f"{params:,} parameters x 4 bytes", ENV)
    # bfloat16 halves the estimate: the same limits then fit memory and disk together, and the split loads
    monkeypatch.setenv(ENV, f"cpu={size // 3},disk={size // 4}")
    loaded = load_model(str(tiny_model_dir), device="auto", dtype="bfloat16", cache_dir=tmp_path / "cache")
    assert "disk" in loaded.device_map.values()


def test_the_memory_limits_parse_units_and_refuse_a_bad_entry():
    assert parse_limits("cuda=1.5GB, cpu=512MiB,disk=0") == {"cuda": 1_500_000_000, "cpu": 512 * 2**20, "disk": 0}
    assert parse_limits("") == {}
    for bad in ("ram=1GB", "cpu=lots", "cpu=1XB", "cpu"):
        with pytest.raises(ProbekitError, match=ENV):
            parse_limits(bad)


def test_the_estimate_counts_the_parameters_the_loaded_model_has(tiny_model_dir):
    from transformers import AutoConfig

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    unique = {id(p): p for p in loaded.model.parameters()}.values()
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert weights_size(config, torch.float32) == (sum(p.numel() for p in unique), sum(p.numel() * 4 for p in unique))
    assert weights_size(config, torch.bfloat16)[1] == sum(p.numel() * 2 for p in unique)
