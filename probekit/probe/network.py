"""The probe network: an encoder φ over frozen LM states and a scalar reward head r(φ).

(The frozen LM itself is `probekit.models`; goals and Q-values are `probekit.probe.goals`,
and `probekit.probe.scoring` runs a fitted network over stored or live states.)
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from probekit.errors import ProbekitError

ENCODERS = ("mlp", "linear")
HEADS = ("linear", "mlp")
POOLINGS = ("last", "mean", "attention")
_MAX_LOGIT_GAP = 600.0  # attention logits below the trajectory's best by more than this are clipped (float64 exp stays > 0)
FOLD_MEAN_LIMIT = 64.0  # largest |μ|/σ of an input feature for which `folded_encoder` folds μ into the bias


class _Center(nn.Module):
    """x − μ, for the folded encoder when μ cannot be folded without losing precision."""

    def __init__(self, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


class ProbeModel(nn.Module):
    """φ: normalise -> encoder -> z [..., rep_size]; r: head(z) -> [...].

    encoder "mlp": Linear/GELU through `widths` then Linear to `rep_size`;
    encoder "linear": one Linear hidden -> rep_size.
    head "linear": Linear(rep, 1); head "mlp": Linear(rep, head_hidden)/GELU/Linear(head_hidden, 1)
    (the official code's `value_head_strategy` linear / mlp).

    Frozen LM states have a few huge outlier dimensions, so inputs are
    standardised with per-feature mean/std of the training states, stored as
    buffers (saved with the weights) and applied inside `encode`.

    Several layers: the input is `n_layers` states of width `hidden_size` side
    by side. With `mix` they are standardised and summed with learned softmax
    weights before the encoder (one hidden-wide input); otherwise the encoder
    reads them concatenated. `pooling` says how the reward of a (partial)
    completion is read from its tokens' φ (see `pool`); φ and Q stay per token.
    The defaults (one layer, last-token pooling) are the original probe, with
    the same parameters created in the same order, so a seed gives the same
    initial weights.
    """

    def __init__(
        self,
        hidden_size: int,
        encoder: str = "mlp",
        widths: tuple[int, ...] = (256,),
        rep_size: int = 128,
        head: str = "linear",
        head_hidden: int = 64,
        n_layers: int = 1,
        mix: bool = False,
        pooling: str = "last",
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise ProbekitError(f"encoder must be one of {', '.join(ENCODERS)}, got '{encoder}'")
        if head not in HEADS:
            raise ProbekitError(f"head must be one of {', '.join(HEADS)}, got '{head}'")
        if pooling not in POOLINGS:
            raise ProbekitError(f"pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")
        widths = tuple(int(w) for w in widths)
        if n_layers < 1:
            raise ProbekitError(f"n_layers must be at least 1, got {n_layers}")
        if hidden_size < 1 or rep_size < 1 or head_hidden < 1 or any(w < 1 for w in widths):
            raise ProbekitError("hidden_size, widths, rep_size and head_hidden must be positive")
        self.hidden_size = int(hidden_size)
        self.encoder_kind = encoder
        self.widths = widths if encoder == "mlp" else ()
        self.rep_size = int(rep_size)
        self.head_kind = head
        self.head_hidden = int(head_hidden)
        self.n_layers, self.mix, self.pooling = int(n_layers), bool(mix), pooling
        self.in_features = self.n_layers * self.hidden_size

        self.register_buffer("in_mean", torch.zeros(self.in_features))
        self.register_buffer("in_std", torch.ones(self.in_features))
        layers: list[nn.Module] = []
        d = hidden_size if mix else self.in_features
        if encoder == "mlp":
            for w in widths:
                layers += [nn.Linear(d, w), nn.GELU()]
                d = w
        layers.append(nn.Linear(d, rep_size))
        self.encoder = nn.Sequential(*layers)
        if head == "linear":
            self.head = nn.Sequential(nn.Linear(rep_size, 1))
        else:
            self.head = nn.Sequential(nn.Linear(rep_size, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
        # Created after the original parameters (and without the RNG): the default probe initialises as before.
        if mix:
            self.mix_logits = nn.Parameter(torch.zeros(self.n_layers))  # equal weights to start
        if pooling == "attention":
            self.query = nn.Parameter(torch.zeros(rep_size))  # uniform attention (= mean pooling) to start

    def config(self) -> dict:
        """Constructor arguments: `ProbeModel(**model.config())` rebuilds the architecture."""
        return {
            "hidden_size": self.hidden_size,
            "encoder": self.encoder_kind,
            "widths": list(self.widths),
            "rep_size": self.rep_size,
            "head": self.head_kind,
            "head_hidden": self.head_hidden,
            "n_layers": self.n_layers,
            "mix": self.mix,
            "pooling": self.pooling,
        }

    @torch.no_grad()
    def set_normalization(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Set the input standardisation; near-constant features get std 1 (no blow-up)."""
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(std), dtype=torch.float32).clone()
        scale = float(std.max()) if std.numel() else 1.0
        std[std <= 1e-6 * max(scale, 1.0)] = 1.0
        self.in_mean.copy_(mean)
        self.in_std.copy_(std)

    def layer_weights(self) -> torch.Tensor:
        """Softmax weights [n_layers] of a mixing probe's layers."""
        return torch.softmax(self.mix_logits, dim=0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): [..., n_layers·hidden] -> [..., rep_size]."""
        x = (x - self.in_mean) / self.in_std
        if self.mix:
            x = (x.unflatten(-1, (self.n_layers, self.hidden_size)) * self.layer_weights()[:, None]).sum(-2)
        return self.encoder(x)

    def pool(self, z: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Pooled φ of every prefix: row i of [rows, rep] pools the rows of its trajectory up to and including i.

        `offsets` [n+1] delimit the trajectories' rows in `z`. The reward of a
        (partial) completion is `reward(pool(...))` at its last row, so training
        (whole completions), evaluation and filtering (every prefix) read one
        computation. "last": z itself; "mean": running mean; "attention":
        running softmax(z·query/√rep)-weighted mean (exact: every prefix's
        weights share the trajectory's max logit; float64 keeps the sums).
        """
        if self.pooling == "last":
            return z
        lengths = torch.diff(offsets)
        seg = torch.repeat_interleave(torch.arange(len(lengths), device=z.device), lengths)
        if self.pooling == "mean":
            w = torch.ones(len(z), dtype=torch.float64, device=z.device)
        else:
            logit = (z.double() @ self.query.double()) / self.rep_size ** 0.5
            top = torch.full((len(lengths),), -torch.inf, dtype=torch.float64, device=z.device)
            top = top.scatter_reduce(0, seg, logit.detach(), "amax")  # a constant per trajectory: cancels in the ratio
            w = torch.exp((logit - top[seg]).clamp(min=-_MAX_LOGIT_GAP))
        num = _segment_cumsum(w[:, None] * z.double(), offsets)
        den = _segment_cumsum(w[:, None], offsets)
        return (num / den).to(z.dtype)

    @torch.no_grad()
    def folded_encoder(self) -> nn.Sequential:
        """φ for inference, with the input standardisation folded into the first Linear.

        ((x − μ)/σ)·Wᵀ + b = x·(W/σ)ᵀ + (b − (W/σ)·μ), computed in float64 then cast
        back. Scoring a store is a few matmuls per row; the two elementwise passes
        over the wide input were about a quarter of its time. Folding μ cancels
        x·(W/σ) against the bias, which loses precision when a feature's |μ|/σ is
        large, so μ is folded only while max |μ|/σ <= FOLD_MEAN_LIMIT (SmolLM2's
        layers measured 5-13, Gemma-3's layer 3 83); beyond it the inputs are
        centred first and only σ is folded. Not for training: the returned layers
        are detached copies.
        """
        first = self.encoder[0]
        weight = first.weight.double()
        if self.mix:  # the mix is linear: block l of the folded weight is softmax_l · W
            weight = torch.cat([a * weight for a in self.layer_weights().double()], dim=1)
        w = weight / self.in_std.double()
        fold_mean = float((self.in_mean.abs() / self.in_std).max()) <= FOLD_MEAN_LIMIT
        bias = first.bias.double() - (w @ self.in_mean.double() if fold_mean else 0.0)
        folded = nn.Linear(self.in_features, first.out_features).to(first.weight.device)
        folded.weight.copy_(w.to(first.weight.dtype))
        folded.bias.copy_(bias.to(first.bias.dtype))
        layers = ([] if fold_mean else [_Center(self.in_mean.clone())]) + [folded]
        layers += [copy.deepcopy(layer) for layer in list(self.encoder)[1:]]
        return nn.Sequential(*layers).eval().requires_grad_(False)

    def reward(self, z: torch.Tensor) -> torch.Tensor:
        """r(z): [..., rep_size] -> [...]."""
        return self.head(z).squeeze(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.reward(z)



def _segment_cumsum(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Cumulative sum of the rows of x [rows, d] that restarts at each offsets[i] (float64)."""
    c = torch.cumsum(x, dim=0)
    starts = offsets[:-1]
    lengths = torch.diff(offsets)
    before = torch.cat([torch.zeros_like(c[:1]), c])[starts]  # sum of all rows before each trajectory
    return c - torch.repeat_interleave(before, lengths, dim=0)
