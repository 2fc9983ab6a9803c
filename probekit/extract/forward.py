"""A forward pass that computes only up to the deepest requested layer.

Forward hooks capture the outputs of the requested decoder blocks; the hook of
the deepest one raises `_StopForward`, so no later block and no LM head run.
This is why extraction never uses `output_hidden_states=True`, which would run
and keep every layer plus the vocabulary projection.

Layer numbering follows Hugging Face's `hidden_states`: layer L is the output
of decoder block L (1-based), and layer `num_layers` includes the final norm.
"""

from __future__ import annotations

import torch

from probekit.models import get_decoder_layers, get_final_norm


class _StopForward(Exception):
    pass


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


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
    blocks = get_decoder_layers(model)
    n = len(blocks)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            captured[layer] = _hidden(output)
            if layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in sorted(set(layers)):
            module = get_final_norm(model) if layer == n else blocks[layer - 1]
            handles.append(module.register_forward_hook(make_hook(layer)))
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    return {layer: captured[layer] for layer in layers}
