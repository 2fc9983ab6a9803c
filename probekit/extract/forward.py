"""Forward hooks that capture decoder-layer outputs: one mechanism for extraction and generation.

`capture_layers` registers hooks on the requested decoder blocks and collects
their outputs during whatever forward pass runs inside it. Extraction
(`forward_layers`) asks it to stop the pass after the deepest requested layer,
so no later block and no LM head run (this is why extraction never uses
`output_hidden_states=True`, which would run and keep every layer plus the
vocabulary projection); generation lets the pass finish, since it needs the
logits, and reads the same captured states token by token.

Layer numbering follows Hugging Face's `hidden_states`: layer L is the output
of decoder block L (1-based), and layer `num_layers` includes the final norm.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import numpy as np
import torch

from probekit.errors import ProbekitError
from probekit.models import get_decoder_layers, get_final_norm
from probekit.store import STATE_DTYPES

# A store's state dtypes as torch and numpy dtypes: extraction and generation cast captured states with these.
STORE_DTYPES = {name: (getattr(torch, name), np.dtype(name).type) for name in STATE_DTYPES}


class _StopForward(Exception):
    pass


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def capture_layers(model: torch.nn.Module, layers: list[int], stop_after_deepest: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict that each forward pass inside the block fills with {layer: output [batch, seq, hidden]}.

    With `stop_after_deepest`, the deepest layer's hook raises `_StopForward`;
    the caller catches it (see `forward_layers`). No layers: no hooks (a plain forward).
    """
    blocks = get_decoder_layers(model)
    n = len(blocks)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers, default=0)

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            captured[layer] = _hidden(output)
            if stop_after_deepest and layer == deepest:
                raise _StopForward

        return hook

    handles = []
    try:
        for layer in sorted(set(layers)):
            module = get_final_norm(model) if layer == n else blocks[layer - 1]
            handles.append(module.register_forward_hook(make_hook(layer)))
        yield captured
    finally:
        for h in handles:
            h.remove()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row (padding does not count), as extraction uses."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def forward_layers(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: list[int],
) -> dict[int, torch.Tensor]:
    """Hidden states [batch, seq, hidden] at each layer in `layers` (HF numbering).

    Position ids come from the attention mask, so left- and right-padded
    batches give the same states for the real tokens.
    """
    with capture_layers(model, layers, stop_after_deepest=True) as captured:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        except _StopForward:
            pass
    return {layer: captured[layer] for layer in layers}


def cache_argument(model) -> str:
    """transformers renamed `past_key_values` to `cache` (the old name is deprecated from 5.x); use what this version takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def full_attention_everywhere(model) -> bool:
    """True when every layer attends causally over the whole context (no sliding windows), so a prompt's KV cache,
    computed once, gives its completions the same states as a forward over prompt + completion."""
    cfg = getattr(model, "config", None)
    types = set(getattr(cfg, "layer_types", None) or ())
    return getattr(cfg, "sliding_window", None) is None and types <= {"full_attention"}


@torch.inference_mode()
def forward_layers_shared(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    prompt_of: torch.Tensor,
    layers: list[int],
) -> dict[int, torch.Tensor]:
    """Hidden states [completions, completion_len, hidden] of the completions, each after its prompt.

    Prompts (left-padded, [P, p_len]) run once, up to the deepest layer, into a
    KV cache; the cache is repeated per completion (`prompt_of[k]` = the prompt
    row of completion k) and the completions (right-padded) run on top of it.
    Best-of-n data (n samples per question) so skip n - 1 of every prompt's
    forward passes.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    kv = {cache_argument(model): cache}
    with capture_layers(model, layers, stop_after_deepest=True):
        try:
            model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids_from_mask(prompt_mask), use_cache=True, **kv)
        except _StopForward:
            pass
    cache.batch_select_indices(prompt_of)
    before = prompt_mask[prompt_of]
    mask = torch.cat([before, completion_mask], dim=1)
    positions = before.sum(dim=1, keepdim=True) + torch.arange(completion_ids.shape[1], device=completion_ids.device)
    with capture_layers(model, layers, stop_after_deepest=True) as captured:
        try:
            model(input_ids=completion_ids, attention_mask=mask, position_ids=positions, use_cache=True, **kv)
        except _StopForward:
            pass
    return {layer: captured[layer] for layer in layers}


def checked_states(x: torch.Tensor, dtype: torch.dtype, tid: str, layer: int, dtype_name: str) -> np.ndarray:
    """Cast to the storage dtype and refuse non-finite values (fp16 overflow, NaNs from the model)."""
    if not torch.isfinite(x).all():
        raise ProbekitError(f"trajectory '{tid}': the model produced non-finite hidden states at layer {layer}")
    y = x.to(dtype)
    if not torch.isfinite(y).all():
        raise ProbekitError(
            f"trajectory '{tid}': hidden states at layer {layer} overflow {dtype_name} "
            f"(max |x| = {x.abs().max().item():.3g}); re-run with --dtype float32"
        )
    return y.float().cpu().numpy() if dtype == torch.float32 else y.cpu().numpy()
