"""The probe network: an encoder φ over frozen LM states and a scalar reward head r(φ).

(The frozen LM itself is `probekit.models`; goals and Q-values are `probekit.goals`,
and `probekit.scoring` runs a fitted network over stored or live states.)
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from probekit.errors import ProbekitError

ENCODERS = ("mlp", "linear")
HEADS = ("linear", "mlp")
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
    """

    def __init__(
        self,
        hidden_size: int,
        encoder: str = "mlp",
        widths: tuple[int, ...] = (256,),
        rep_size: int = 128,
        head: str = "linear",
        head_hidden: int = 64,
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise ProbekitError(f"encoder must be one of {', '.join(ENCODERS)}, got '{encoder}'")
        if head not in HEADS:
            raise ProbekitError(f"head must be one of {', '.join(HEADS)}, got '{head}'")
        widths = tuple(int(w) for w in widths)
        if hidden_size < 1 or rep_size < 1 or head_hidden < 1 or any(w < 1 for w in widths):
            raise ProbekitError("hidden_size, widths, rep_size and head_hidden must be positive")
        self.hidden_size = int(hidden_size)
        self.encoder_kind = encoder
        self.widths = widths if encoder == "mlp" else ()
        self.rep_size = int(rep_size)
        self.head_kind = head
        self.head_hidden = int(head_hidden)

        self.register_buffer("in_mean", torch.zeros(hidden_size))
        self.register_buffer("in_std", torch.ones(hidden_size))
        layers: list[nn.Module] = []
        d = hidden_size
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

    def config(self) -> dict:
        """Constructor arguments: `ProbeModel(**model.config())` rebuilds the architecture."""
        return {
            "hidden_size": self.hidden_size,
            "encoder": self.encoder_kind,
            "widths": list(self.widths),
            "rep_size": self.rep_size,
            "head": self.head_kind,
            "head_hidden": self.head_hidden,
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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): [..., hidden] -> [..., rep_size]."""
        return self.encoder((x - self.in_mean) / self.in_std)

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
        w = first.weight.double() / self.in_std.double()
        fold_mean = float((self.in_mean.abs() / self.in_std).max()) <= FOLD_MEAN_LIMIT
        bias = first.bias.double() - (w @ self.in_mean.double() if fold_mean else 0.0)
        folded = nn.Linear(first.in_features, first.out_features).to(first.weight.device)
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

