"""Rows of a batched KV cache come and go: continuous batching merges freshly prefilled rows into the running batch.

A `transformers.DynamicCache` keeps, per layer, keys and values of shape
[batch, heads, length, head_dim]; probekit decodes left-padded rows with an
explicit 2-D attention mask of shape [batch, length] (1 = a real token) and
its own position ids per row. So batches of different lengths merge by
left-padding the shorter ones with masked zero columns, rows leave by
selecting the others, and rows set aside (a stopped sample that may be
resumed) are copies of their rows, merged back like any other batch. After
each of these, columns that no row attends to (the leading ones, masked in
every row) are dropped, so a step's attention cost follows the rows actually
decoding, not the longest row that ever was.

Only `DynamicLayer`s are handled (what `DynamicCache()` without a config
builds, as generation does): their keys and values are plain tensors over
every earlier token, also for sliding-window layers, whose window the mask
applies. The mask counts a window in columns, so every row keeps the tokens
its next query attends to in contiguous columns ending at the last one:
merges pad on the left, and `close_gaps` closes up rows that have masked
columns among their tokens (steer's rewound draws and waiting rows).
"""

from __future__ import annotations

import torch


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """x with zero columns prepended along `dim` up to `width`."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def compact(cache, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns masked in every row (from the cache, in place); returns the mask without them."""
    first = int(mask.any(dim=0).long().argmax())  # every row has a real token, so some column is used
    if first == 0:
        return mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return mask[:, first:]


def merge_rows(cache, mask: torch.Tensor, others: list[tuple]) -> torch.Tensor:
    """Append the rows of each (cache, mask) in `others` after `cache`'s, in place in `cache`; returns the merged, compacted mask.

    Shorter sides are left-padded with zero keys and values under a 0 mask,
    which attention ignores exactly; each row's positions are the caller's
    (probekit passes position ids explicitly), so rotary embeddings are
    unchanged. All parts are concatenated at once: the running cache is
    copied once per admission, however many parts join it.
    """
    masks = [mask] + [m for _, m in others]
    width = max(m.shape[1] for m in masks)
    for i, mine in enumerate(cache.layers):
        layers = [mine] + [c.layers[i] for c, _ in others]
        mine.keys = torch.cat([_left_pad(x.keys, width, 2) for x in layers])
        mine.values = torch.cat([_left_pad(x.values, width, 2) for x in layers])
    return compact(cache, torch.cat([_left_pad(m, width, 1) for m in masks]))


def close_gaps(cache, mask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Move every row's masked columns in front of its real ones (keys, values and mask, in place; the real ones
    keep their order) and compact; returns the new mask. Nothing moves unless a row in `rows` (bool [rows], the
    rows about to be fed; None: all) has a gap, so rows that merely wait cost no copy per step.

    A masked column between a row's tokens changes nothing under full attention, but a sliding window counts
    columns, so it would hide a real token that a plain forward's window still covers. Position ids are the
    caller's and rotary embeddings are already in the keys, so moving columns changes no state.
    """
    closed = (mask[:, 1:] >= mask[:, :-1]).all(dim=1)  # the row is 0...0 1...1
    if rows is not None:
        closed |= ~rows
    if bool(closed.all()):
        return mask
    order = torch.sort(mask, dim=1, stable=True).indices
    for layer in cache.layers:
        layer.keys = layer.keys.gather(2, order[:, None, :, None].expand_as(layer.keys))
        layer.values = layer.values.gather(2, order[:, None, :, None].expand_as(layer.values))
    return compact(cache, mask.gather(1, order))


def keep_rows(cache, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep only rows `keep` (indices, in order) of the cache, in place; returns their compacted mask."""
    cache.batch_select_indices(keep)
    return compact(cache, mask[keep])


def copy_rows(cache, mask: torch.Tensor, index: torch.Tensor) -> tuple:
    """(a new cache, its mask) holding copies of rows `index`, compacted: rows set aside to be merged back later."""
    from transformers import DynamicCache

    part = DynamicCache([(layer.keys[index], layer.values[index]) for layer in cache.layers])
    return part, compact(part, mask[index])
