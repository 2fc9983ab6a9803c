"""Random-weight models with the shapes of real ones: what the model-size curve (model_size.py) and the GPU run (run_gpu.py) measure.

Speed and memory do not depend on the weights' values, so a model built from a real architecture's config with random
weights runs the same kernels at the same cost as the released one, with no download. The config fields below are those
of each model's published config.json (hub ids in `hub_id`, for the record); vocabulary sizes are kept, so the LM head
the naive loop runs costs what it costs in the real model. The tokenizer is the bundled SmolLM2 one (49,152 tokens,
fewer than every vocabulary here), so every model reads the same token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_LLAMA3_ROPE = {"rope_type": "llama3", "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class ModelShape:
    """A real model's architecture: its transformers config class and the fields of its config.json that set its cost."""

    name: str
    hub_id: str
    config_class: str
    fields: dict = field(default_factory=dict)


SHAPES = {
    s.name: s
    for s in (
        ModelShape("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", "LlamaConfig", dict(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
            vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)),
        ModelShape("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", "LlamaConfig", dict(
            hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
            vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)),
        ModelShape("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "LlamaConfig", dict(
            hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
            head_dim=64, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
            rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, rms_norm_eps=1e-5, tie_word_embeddings=True)),
        ModelShape("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", "Qwen2Config", dict(
            hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
            vocab_size=151936, max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
            use_sliding_window=False, sliding_window=131072, max_window_layers=28)),
        ModelShape("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "LlamaConfig", dict(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            head_dim=128, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
            rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, rms_norm_eps=1e-5, tie_word_embeddings=False)),
        # The GPU script's CPU smoke run (`run_gpu.py --tiny`): the 8B layout at a width that runs in seconds.
        ModelShape("tiny-llama", "(none: a smoke-test shape)", "LlamaConfig", dict(
            hidden_size=64, intermediate_size=224, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=49152, max_position_embeddings=131072, rope_theta=500000.0,
            rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    )
}


def random_model(shape: ModelShape, tokenizer, dtype, device: str = "cpu", seed: int = 0):
    """A frozen `LoadedModel` of `shape` with random weights in `dtype`, built directly on `device` (an 8B model is
    initialised on the GPU, not in host memory first), reading `tokenizer`'s ids."""
    import torch
    import transformers

    from probekit.models import LoadedModel, get_decoder_layers

    special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = getattr(transformers, shape.config_class)(**shape.fields, **special)
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"{shape.name}-random", source=f"random weights, {shape.hub_id} config",
                       file_sha256=None, revision=None, num_layers=len(get_decoder_layers(model)), hidden_size=config.hidden_size,
                       device=torch.device(device), dtype=dtype)


def parameter_count(loaded) -> int:
    """Parameters of the model, tied tensors counted once."""
    return sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values())
