"""A planted language model and probe whose choices are known in advance (tests/test_steering.py,
tests/test_official_steering.py).

The tiny Llama is rewired into a bigram model: each token's embedding is the
one-hot vector of its class (newline, "A", ":", " 5", or any other token),
blocks 1-3 add nothing (their output projections are zero), and the LM head
gives each class's planted successors logit 20 and every other token 0, which
top-p 0.95 removes: a class with two successors draws each with probability
1/2. Block 4 stays random, so the layer-4 states the probe reads also depend a
little on the context. A linear probe maps each class to a planted φ in the
plane and the goal is (1, 0), so each token's Q is the cosine of its class's
angle: the searches below must make the choices the options say.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from probekit.data.prompts import Prompt
from probekit.generate.config import GenerateConfig
from probekit.models import load_model

TEXTS = {"NL": "\n", "A": "A", "COLON": ":", "FIVE": " 5"}
CLASSES = ["OTHER", *TEXTS]  # class k is embedding dimension k
PROMPTS = [Prompt(f"p{i}", f"Question {i}: how many apples are left?", "5") for i in range(6)]


def plant_lm(tiny_model_dir, successors: dict[str, list[str]]):
    """A fresh copy of the tiny model rewired into the bigram model of `successors` (class -> next tokens, "EOS" allowed)."""
    loaded = load_model(str(tiny_model_dir), device="cpu")
    tok, model = loaded.tokenizer, loaded.model
    ids = {}
    for name, text in TEXTS.items():
        (ids[name],) = tok(text, add_special_tokens=False)["input_ids"]
    ids["EOS"] = tok.eos_token_id
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        for k, name in enumerate(CLASSES[1:], start=1):
            emb[ids[name]] = 0.0
            emb[ids[name], k] = 1.0
        for block in model.model.layers[:3]:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        head = model.lm_head.weight
        head.zero_()
        for src, nexts in successors.items():
            for nxt in nexts:  # the final norm scales a one-hot state to sqrt(hidden)
                head[ids[nxt], CLASSES.index(src)] = 20.0 / math.sqrt(model.config.hidden_size)
    return loaded


def plant_probe(folder, q: dict[str, float], lm):
    """A checkpoint over layer 4 of `lm` whose φ of a class-k token is (q_k, sqrt(1 - q_k²)): Q toward the goal (1, 0) is q_k."""
    from probekit.outputs import claim_output
    from probekit.probe.checkpoint import save_checkpoint
    from probekit.probe.network import ProbeModel
    from tests.helpers import planted_store_record

    model = ProbeModel(32, "linear", rep_size=2)
    with torch.no_grad():
        enc = model.encoder[0]
        enc.weight.zero_()
        enc.bias.zero_()
        for name, value in q.items():
            enc.weight[:, CLASSES.index(name)] = torch.tensor([value, math.sqrt(1 - value ** 2)])
    goals = {"mean": np.array([[1.0, 0.0]], np.float32)}
    return save_checkpoint(claim_output(folder, "fit"), model, {"layer": 4, "store": planted_store_record(lm, [4])}, goals, {"train": [], "valid": [], "test": []}, {})


def gen_config(**kw) -> GenerateConfig:
    base = dict(model="planted", max_new_tokens=8, temperature=1.0, top_p=0.95, seed=0, template="raw", answer="synth")
    return GenerateConfig(**{**base, **kw})
