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
from dataclasses import dataclass
from typing import Any, Iterator

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


# Layer kinds (a config's `layer_types`) whose cache is the keys and values of every earlier token, as a
# `DynamicCache()` without a config keeps them, and whose mask depends only on the distance between columns:
# a sliding window is `q - k < window` in columns (transformers' eager, sdpa and flex masks). Every layout
# probekit builds keeps the tokens a query attends to in contiguous columns ending at the query (left-padded
# prompts followed by their completions, right padding after a row's last token, rows merged by left padding,
# steer's rewound or waiting rows closed up by `kv_rows.close_gaps`), so column distances are token distances
# and a window covers what it covers in a plain forward: shared prompts, continuous batching and rewinds are
# exact for these layers (tests/test_architectures.py, with windows shorter than the contexts).
KV_LAYER_KINDS = frozenset({"full_attention", "sliding_attention"})


def other_layer_kinds(model) -> list[str]:
    """The model's layer kinds that are not attention over a plain KV cache (recurrent `linear_attention`, `conv`,
    `chunked_attention` ...), from its config's `layer_types`; configs without them (Llama, Mistral, Phi-3,
    GPT-NeoX ...) have attention layers only."""
    types = getattr(model.config.get_text_config(), "layer_types", None) or ()
    return sorted(set(types) - KV_LAYER_KINDS)


def kv_attention_everywhere(model) -> bool:
    """True when every layer is full or sliding-window attention (`KV_LAYER_KINDS`), so a prompt's KV cache,
    computed once, gives its completions the same states as a forward over prompt + completion."""
    return not other_layer_kinds(model)


def require_kv_attention(model, command: str) -> None:
    """Refuse, in one line, a model whose layers keep other state than keys and values: `command` (generate,
    steer) batches, merges, drops and rewinds rows of a KV cache, which a recurrent state cannot do."""
    kinds = other_layer_kinds(model)
    if kinds:
        raise ProbekitError(
            f"{command}: {type(model).__name__} has {', '.join(kinds)} layers, whose state probekit's batched decoding "
            f"cannot merge or rewind (it supports full and sliding-window attention); sample with another tool "
            f"(e.g. transformers' generate) and run `probekit extract` on the samples, which supports this model"
        )


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


def to_device(x: torch.Tensor, device: torch.device, overlap: bool) -> torch.Tensor:
    """`x` (host) on `device`. On a GPU a plain copy from pageable memory waits until the stream has run out of
    work (torch synchronises it), which empties the GPU's queue before every batch; with `overlap` the copy is
    from pinned memory and does not wait (torch keeps the pinned block until the copy has run)."""
    if overlap and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


@dataclass
class StagedStates:
    """Rows on their way to the host in a store's dtype (`stage_states`); `host_states` finishes the move."""

    source: torch.Tensor  # the rows as the model computed them, on its device: re-checked for the message of a bad value
    host: torch.Tensor | None = None  # the cast rows in pinned host memory, filled by a non-blocking copy (GPU only)
    flags: torch.Tensor | None = None  # [source finite, cast finite], pinned, filled likewise
    ready: Any = None  # a torch.cuda.Event recorded after both copies


def stage_states(x: torch.Tensor, dtype: torch.dtype) -> StagedStates:
    """Start `checked_states(x, dtype, ...)` without waiting for the device.

    On a GPU the cast, the two finiteness tests and the copies into pinned host memory are queued on `x`'s
    stream and an event marks their end, so the host goes on to the next batch's forward while they run. On a
    CPU there is nothing to wait for: `host_states` does the whole of `checked_states` where it is called (the
    writer thread, off the forward's path).
    """
    if x.device.type != "cuda":
        return StagedStates(x)
    y = x.to(dtype)
    flags = torch.stack((torch.isfinite(x).all(), torch.isfinite(y).all()))
    host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
    host.copy_(y, non_blocking=True)
    host_flags = torch.empty(2, dtype=torch.bool, pin_memory=True)
    host_flags.copy_(flags, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record(torch.cuda.current_stream(x.device))
    return StagedStates(x, host, host_flags, ready)


def host_states(staged: StagedStates, dtype: torch.dtype, tid: str, layer: int, dtype_name: str) -> np.ndarray:
    """What `checked_states(staged.source, ...)` returns, the same array and the same errors, waiting only for
    this batch's copy."""
    if staged.host is None:
        return checked_states(staged.source, dtype, tid, layer, dtype_name)
    staged.ready.synchronize()
    if not bool(staged.flags.all()):
        return checked_states(staged.source, dtype, tid, layer, dtype_name)  # raises, with the value in its message
    # Out of pinned memory, which goes back to torch's pool for a later batch (a shard's worth would stay pinned).
    return staged.host.numpy().copy()
