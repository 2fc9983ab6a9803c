"""Where a model's weights go: on the one device when they fit, split by accelerate when `--device auto` and they do
not, or a one-line refusal with the estimate when they cannot fit at all.

The weights' size is parameters × the dtype's bytes, counted on a model built from the config on torch's meta device
(no memory, no weights read), so a model too big for the machine fails in a second with the arithmetic instead of
swapping or being killed by the OOM killer halfway through loading. It is compared with what each tier has free:
the GPU (`torch.cuda.mem_get_info`), the host's available memory, and the disk under the offload folder. A tenth of
each measured figure is left for activations and caches.

With `--device auto`, weights that exceed the device but fit the tiers together are given to accelerate's
`device_map="auto"` with those limits: whole decoder blocks fill the GPU first, then host memory, then the disk
(on a machine without a GPU: host memory, then disk), and accelerate's hooks move each block's weights to the
execution device for its forward, so the states are those of the plain load (tests/test_loading.py compares them).
`PROBEKIT_MAX_MEMORY` ("cuda=20GB,cpu=8GB,disk=0"; units B, KB, MB, GB, KiB, MiB, GiB) replaces the measured figure
of any tier: to cap what probekit takes on a shared machine, or to see what a smaller machine would do.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from probekit.errors import ProbekitError

ENV = "PROBEKIT_MAX_MEMORY"
HEADROOM = 0.9  # of a measured free figure, usable for weights
TIERS = ("cuda", "cpu", "disk")
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class Placement:
    """How to load: `device_map` None puts the whole model on the device; "auto" lets accelerate split it within
    `max_memory` (accelerate's keys: a GPU index, "cpu"), the rest offloaded to the disk. Zero bytes: not estimated
    (`weights_size`)."""

    weights_bytes: int
    parameters: int
    device_map: str | None = None
    max_memory: dict | None = None


def parse_limits(text: str) -> dict[str, int]:
    """{tier: bytes} from `PROBEKIT_MAX_MEMORY`'s "tier=size,..." (a bad entry is a one-line error naming it)."""
    limits: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        tier, _, size = part.partition("=")
        match = _SIZE.match(size.lower())
        if tier.strip() not in TIERS or not match or match.group(2) not in ("", *_UNITS):
            raise ProbekitError(f"{ENV}={text}: bad entry '{part}'; expected tier=size with tier one of {', '.join(TIERS)} "
                                "and a size like 8GB, 512MiB or 0")
        limits[tier.strip()] = int(float(match.group(1)) * _UNITS[match.group(2) or "b"])
    return limits


def available_memory(device: torch.device, offload_dir: Path, overrides: dict[str, int]) -> dict[str, int]:
    """Bytes usable for weights on each tier this device can use, in the order accelerate fills them."""
    measured = {"cpu": lambda: psutil.virtual_memory().available, "disk": lambda: shutil.disk_usage(_existing(offload_dir)).free}
    if device.type == "cuda":
        measured = {"cuda": lambda: torch.cuda.mem_get_info(device.index or 0)[0], **measured}
    return {tier: overrides[tier] if tier in overrides else int(HEADROOM * measure()) for tier, measure in measured.items()}


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def weights_size(config: Any, dtype: torch.dtype) -> tuple[int, int] | None:
    """(parameters, bytes) of the model `config` describes in `dtype`, tied tensors counted once; built on the meta device.

    None for a quantised checkpoint (its bytes per parameter are not the dtype's) or a config transformers cannot
    build on the meta device: such a model loads as before, unplanned, rather than not at all.
    """
    from transformers import AutoModelForCausalLM

    if getattr(config, "quantization_config", None):
        return None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, TypeError, ImportError, NotImplementedError, RuntimeError):
        return None
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def plan_placement(source: str, config: Any, dtype: torch.dtype, device: torch.device, may_split: bool, offload_dir: Path,
                   overrides: dict[str, int]) -> Placement:
    """The placement of `source`'s weights on `device`; `may_split` (--device auto) allows a split across tiers."""
    counted = weights_size(config, dtype)
    if counted is None:
        return Placement(0, 0)
    params, size = counted
    free = available_memory(device, offload_dir, overrides)
    first = next(iter(free))
    if size <= free[first]:
        return Placement(size, params)
    need = (f"{source}: the weights need {_gb(size)} ({params:,} parameters x {size // max(params, 1)} bytes in "
            f"{str(dtype).replace('torch.', '')})")
    have = ", ".join(f"{device if tier == 'cuda' else tier} {_gb(b)}" for tier, b in free.items())
    if not may_split:
        raise ProbekitError(f"{need} but {device} has {_gb(free[first])} free: use --device auto to split the model across "
                            f"{' + '.join(free)} (accelerate), a smaller --model-dtype, or a machine with more memory")
    if size > sum(free.values()):
        raise ProbekitError(f"{need} and will not fit: free for weights {have} ({ENV} overrides these); use a smaller model "
                            "or --model-dtype (bfloat16 halves float32), or free memory")
    keys = {"cuda": device.index or 0, "cpu": "cpu"}
    return Placement(size, params, "auto", {keys[tier]: b for tier, b in free.items() if tier in keys})


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**7 else f"{n / 1e6:.2f} MB"
