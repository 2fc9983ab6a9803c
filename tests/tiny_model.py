"""Build a tiny random causal LM (Llama unless asked otherwise) + byte-level BPE tokenizer on disk, with no download."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Tom has 12 apples. He buys 3 boxes with 4 apples each. How many apples does he have now?",
    "Step 1: 3 * 4 = 12. Step 2: 12 + 12 = 24. A: 24",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt, then bake it.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = . , ? !",
    "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore.",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


OMIT = object()  # an override that leaves a common config field out (GPT-NeoX has no num_key_value_heads)


def build_tiny_model(folder: Path, num_layers: int = 4, hidden: int = 32, seed: int = 0, config_class: str = "LlamaConfig",
                     **overrides) -> Path:
    """A random model of transformers' `config_class` (Llama by default) saved with the tiny tokenizer.

    The common fields (widths, heads, vocabulary and special tokens of the tokenizer) fit every decoder that
    transformers ships with Llama-style names; `overrides` adds architecture-specific ones or, as OMIT, drops one.
    """
    import torch
    import transformers

    tokenizer = build_tokenizer()
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(overrides)
    config = getattr(transformers, config_class)(**{k: v for k, v in fields.items() if v is not OMIT})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
