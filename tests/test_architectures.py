"""Every decoder family users bring, as a tiny random model: extract, generate (with --filter) and steer give the
states of a plain `output_hidden_states` forward.

Each architecture is built once for the module from transformers' own config class (4 layers, width 32, the tiny
tokenizer's vocabulary; no download) and runs in float32, so "equal" means float32 rounding. Every sliding window
here (Mistral, Phi-3, Gemma 2/3's local layers, OLMo 3, Qwen2 with windows on) is WINDOW tokens, shorter than the
prompts and completions, and each test of a windowed model checks that widening the window changes the plain
forward's states, so a window that a KV cache, a merge or a rewind failed to honour would show. Qwen2 with
`use_sliding_window` false carries a window it never applies and must still share prompts. A model with recurrent
layers (Qwen3.5's linear attention) extracts exactly without sharing prompts and is refused by generate and steer in
one line.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from probekit.data.prompts import Prompt
from probekit.data.schema import read_trajectories
from probekit.errors import ProbekitError
from probekit.extract.options import ExtractOptions
from probekit.extract.render import encode
from probekit.extract.run import extract
from probekit.generate.config import GenerateConfig, SteerConfig
from probekit.generate.generation import generate
from probekit.generate.steering import steer
from probekit.models import load_model
from probekit.store import Store
from tests.helpers import (
    assert_one_line_error,
    assert_online_stopping_decides_what_the_filter_decides,
    assert_same_store,
    extracted_last_q,
    random_probe,
    run_cli,
    shared_prompt_file,
)
from tests.tiny_model import OMIT, build_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # several times faster for these tiny models on a busy machine
WINDOW = 6  # tokens; prompts and completions here are longer

# name: (transformers config class, fields beyond tests/tiny_model.py's common ones)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"sliding_window": 131072, "use_sliding_window": False}),  # as Qwen2.5's configs ship
    "qwen2-sliding": ("Qwen2Config", {"sliding_window": WINDOW, "use_sliding_window": True, "max_window_layers": 2}),  # layers 3-4
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "qwen3-moe": ("Qwen3MoeConfig", {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}),
    "mistral": ("MistralConfig", {"head_dim": 8, "sliding_window": WINDOW}),  # every layer windowed
    "gemma2": ("Gemma2Config", {"head_dim": 8, "sliding_window": WINDOW}),  # local and global layers alternate
    "gemma3": ("Gemma3TextConfig", {"head_dim": 8, "sliding_window": WINDOW, "sliding_window_pattern": 2}),
    "phi3": ("Phi3Config", {"sliding_window": WINDOW}),  # Phi-3-mini's config windows every layer (2047)
    "olmo2": ("Olmo2Config", {}),
    "olmo3": ("Olmo3Config", {"sliding_window": WINDOW}),  # three local layers, then a global one
    "gpt-neox": ("GPTNeoXConfig", {"num_key_value_heads": OMIT}),  # gpt_neox.layers / final_layer_norm
    "smollm3": ("SmolLM3Config", {}),  # every 4th layer without rotary embeddings
}
HYBRID = ("Qwen3_5TextConfig", {"head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
                                "linear_value_head_dim": 8})  # linear_attention x3, full_attention
PROMPTS = [Prompt(f"p{i}", f"Question {i}: Tom has {i + 7} apples and eats {i + 2} of them. How many apples are left?", "5")
           for i in range(4)]
LAYERS = "1,2,3,4"  # every layer, the last one (after the final norm) included


def tiny(folder, config_class: str, fields: dict):
    """The tiny model of `config_class`, loaded as a user's local folder is (float32); skipped where this
    transformers has no such class (older releases lack the newer families)."""
    import transformers

    if not hasattr(transformers, config_class):
        pytest.skip(f"transformers {transformers.__version__} has no {config_class}")
    return load_model(str(build_tiny_model(folder, config_class=config_class, **fields)), device="cpu", dtype="float32")


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch(request, tmp_path_factory, one_torch_thread):
    config_class, fields = ARCHITECTURES[request.param]
    return tiny(tmp_path_factory.mktemp(request.param), config_class, fields)


def gen_config(**kw) -> GenerateConfig:
    base = dict(model="tiny", samples=3, max_new_tokens=10, temperature=1.0, top_p=0.95, seed=0, template="raw", layers=LAYERS,
                answer="last-number", batch_size=4, shard_size=4, dtype="float32")
    return GenerateConfig(**{**base, **kw})


def extract_opts(data, out, **kw) -> ExtractOptions:
    return ExtractOptions(**{**dict(trajectories=data, out=out, layers=LAYERS, template="raw", dtype="float32", shard_size=4), **kw})


@torch.inference_mode()
def plain_states(loaded, data) -> list[list[np.ndarray]]:
    """[trajectory][layer - 1]: the completion's states in one unpadded `output_hidden_states` forward."""
    trajectories, _ = read_trajectories(data)
    out = []
    for t in trajectories:
        e = encode(t, loaded.tokenizer, "raw", ExtractOptions.max_length)
        hidden = loaded.model(input_ids=torch.tensor([e.input_ids]), output_hidden_states=True).hidden_states
        out.append([hidden[layer][0, e.completion_start:].numpy() for layer in range(1, loaded.num_layers + 1)])
    return out


@contextlib.contextmanager
def wider_windows(model):
    """Sliding windows far beyond any context (transformers reads the window from the config at each forward)."""
    config = model.config.get_text_config()
    window = config.sliding_window
    config.sliding_window = 10**6
    try:
        yield
    finally:
        config.sliding_window = window


def assert_window_binds(loaded, data) -> None:
    """A windowed model's plain states change when its window is widened: the window is shorter than the contexts."""
    window = getattr(loaded.model.config.get_text_config(), "sliding_window", None)
    if window is None:
        return
    assert window == WINDOW
    narrow = plain_states(loaded, data)
    with wider_windows(loaded.model):
        wide = plain_states(loaded, data)
    assert max(np.abs(n[-1] - w[-1]).max() for n, w in zip(narrow, wide)) > 1e-3


def assert_extract_is_a_plain_forward(loaded, data, folder, shares: bool) -> None:
    """extract's stored states, with and without --share-prompts, equal `plain_states` at every layer; prompts are
    run once for their samples exactly when `shares`."""
    reference = plain_states(loaded, data)
    for share in (True, False):
        result = extract(extract_opts(data, folder / f"share-{share}", share_prompts=share), loaded=loaded)
        assert (result.manifest["stats"]["n_prompt_tokens_reused"] > 0) == (share and shares)
        store = Store(folder / f"share-{share}")
        for i, states in enumerate(reference):
            for layer, want in enumerate(states, start=1):
                np.testing.assert_allclose(store.trajectory_states(i, layer), want, rtol=1e-4, atol=1e-4, err_msg=f"share={share} layer={layer}")


def test_extract_with_and_without_shared_prompts_equals_a_plain_forward(arch, tmp_path):
    data = shared_prompt_file(tmp_path / "t.jsonl")
    assert_window_binds(arch, data)
    assert_extract_is_a_plain_forward(arch, data, tmp_path, shares=True)


@pytest.fixture(scope="module")
def unfiltered(arch, tmp_path_factory):
    """Continuous batching: 4 rows for prompts of 3 samples, so prompts join and leave a running cache."""
    return generate(PROMPTS, tmp_path_factory.mktemp("gen") / "out", gen_config(), loaded=arch)


def test_generate_stores_what_extract_stores_on_the_generated_tokens(arch, unfiltered, tmp_path):
    assert_window_binds(arch, unfiltered.out / "trajectories.jsonl")
    extract(extract_opts(unfiltered.out / "trajectories.jsonl", tmp_path / "ex"), loaded=arch)
    assert_same_store(tmp_path / "ex", unfiltered.out / "store", atol=1e-4)


@pytest.fixture(scope="module")
def probe(arch, unfiltered, tmp_path_factory):
    return random_probe(unfiltered.out / "store", arch.num_layers, tmp_path_factory.mktemp("ck") / "ck")


def test_generate_filter_decides_what_filter_decides(arch, unfiltered, probe, tmp_path):
    assert_online_stopping_decides_what_the_filter_decides(unfiltered, probe, PROMPTS, gen_config(), arch, tmp_path / "on")


@contextlib.contextmanager
def newline_bias(loaded, bias: float = 5.0):
    """A logit bias toward the newline token: a random model then often draws blank line steps, which steer redraws."""
    (newline,) = loaded.tokenizer("\n", add_special_tokens=False)["input_ids"]

    def add(_module, _inputs, logits):
        return logits.index_add(-1, torch.tensor([newline]), torch.full((*logits.shape[:-1], 1), bias))

    handle = loaded.model.get_output_embeddings().register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def test_steer_reports_the_q_that_extract_and_the_scorer_give_its_beams(arch, probe, tmp_path):
    """Line steps of different lengths leave rows waiting, and blank ones are redrawn (rewound in place): each final
    beam's reported Q is still the Q of its last token in a plain forward."""
    with newline_bias(arch):
        res = steer(PROMPTS, tmp_path / "s", gen_config(max_new_tokens=12), SteerConfig(beams=2, candidates=3, max_step_tokens=4,
                                                                                      empty_steps="resample"), probe, loaded=arch)
    assert res.stats["resampled_steps"] > 0
    assert_window_binds(arch, tmp_path / "s" / "trajectories.jsonl")
    np.testing.assert_allclose([t.meta["q"] for t in res.trajectories], extracted_last_q(res.trajectories, probe, arch, tmp_path), atol=1e-5)


def probekit_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """(exit status, stderr) of `probekit ARGS`, without what the test printed before (saving a model) and
    transformers' own "Loading weights" bar, so that probekit's own output can be checked to be one line."""
    capsys.readouterr()
    code, err = run_cli(monkeypatch, capsys, *args)
    return code, "\n".join(line for line in err.splitlines() if not line.startswith("Loading weights"))


def test_a_model_with_recurrent_layers_extracts_exactly_and_generate_and_steer_refuse_it_in_one_line(tmp_path, monkeypatch, capsys):
    loaded = tiny(tmp_path / "model", *HYBRID)
    data = shared_prompt_file(tmp_path / "t.jsonl")
    assert_extract_is_a_plain_forward(loaded, data, tmp_path, shares=False)  # its recurrent state is no KV cache to share

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Question: 2 + 2?", "gold": "4"}\n')
    code, err = probekit_cli(monkeypatch, capsys, "generate", prompts, "--out", tmp_path / "o", "--model", tmp_path / "model", "--no-progress")
    assert_one_line_error(code, err, "generate: Qwen3_5ForCausalLM has linear_attention layers", "probekit extract")
    probe = random_probe(tmp_path / "share-False", loaded.num_layers, tmp_path / "ck")
    with pytest.raises(ProbekitError, match="steer: Qwen3_5ForCausalLM has linear_attention layers"):
        steer(PROMPTS, tmp_path / "s", gen_config(), SteerConfig(), probe, loaded=loaded)


def test_an_architecture_whose_blocks_are_not_found_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """OPT keeps its blocks at model.decoder.layers: refused when the model loads, naming it and what to do."""
    build_tiny_model(tmp_path / "opt", config_class="OPTConfig", ffn_dim=64, word_embed_proj_dim=32, intermediate_size=OMIT,
                     num_key_value_heads=OMIT)
    code, err = probekit_cli(monkeypatch, capsys, "extract", shared_prompt_file(tmp_path / "t.jsonl"), "--out", tmp_path / "o",
                             "--model", tmp_path / "opt", "--no-progress")
    assert_one_line_error(code, err, "unsupported model architecture OPTForCausalLM", "probekit.models._ARCHITECTURES")
