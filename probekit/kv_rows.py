"""Rows of a batched KV cache come and go: continuous batching merges a freshly prefilled batch into a running one.

A `transformers.DynamicCache` keeps, per layer, keys and values of shape
[batch, heads, length, head_dim]; probekit decodes left-padded rows with an
explicit 2-D attention mask of shape [batch, length] (1 = a real token) and
its own position ids per row. So two batches of different lengths merge by
left-padding the shorter one with masked zero columns, and rows leave by
selecting the others. After either, columns that no row attends to (the
leading ones, masked in every row) are dropped, so a step's attention cost
follows the rows actually decoding, not the longest row that ever was.

Only full-attention `DynamicLayer`s are handled (what `DynamicCache()` without
a config builds, as generation does): their keys and values are plain tensors.
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


def merge_rows(cache, mask: torch.Tensor, other, other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows after `cache`'s (in place in `cache`); returns the merged, compacted mask.

    The shorter side is left-padded with zero keys and values under a 0 mask,
    which attention ignores exactly; each row's positions are the caller's
    (probekit passes position ids explicitly), so rotary embeddings are unchanged.
    """
    width = max(mask.shape[1], other_mask.shape[1])
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
        mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
    return compact(cache, torch.cat([_left_pad(mask, width, 1), _left_pad(other_mask, width, 1)]))


def keep_rows(cache, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Keep only rows `keep` (indices, in order) of the cache, in place; returns their compacted mask."""
    cache.batch_select_indices(keep)
    return compact(cache, mask[keep])
