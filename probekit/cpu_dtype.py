"""What `--model-dtype auto` runs a model in on a CPU: bfloat16 where it is measured faster, else float32.

On CPUs with bfloat16 dot-product instructions (x86 AVX512_BF16 / AMX_BF16,
Arm BF16) torch's bfloat16 matmuls run several times faster than float32 ones
(about 2-4x on an AMD Zen 4); elsewhere torch emulates bfloat16 and it is
slower. A list of CPU names would go stale and says nothing about the torch
build, so the choice is measured: a few matmuls of the model's hidden size in
both dtypes, interleaved, well under a second. The result is cached in the
probekit cache folder under a key made of the CPU's model name and flags, the
torch version and the hidden size, so the measurement runs once per machine,
torch and model width, and every later load makes the same choice.

A CPU whose flags show no bfloat16 instructions gets float32 without a
measurement. `PROBEKIT_CPU_DTYPE=float32|bfloat16` forces the choice (an
explicit `--model-dtype` does too, and never reaches this module).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from probekit.errors import ProbekitError
from probekit.io import read_json, write_json

ENV = "PROBEKIT_CPU_DTYPE"
CACHE_FILE = "cpu-dtype.json"
CHOICES = ("float32", "bfloat16")
# bfloat16 rounds every state to 8 significant bits; it is chosen only where it
# clearly pays: matmuls at least this many times faster than in float32.
MIN_SPEEDUP = 1.3
# /proc/cpuinfo flags of bfloat16 dot-product instructions (x86 flags, Arm Features).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
_CPUINFO = Path("/proc/cpuinfo")
# Operand sizes of the measurement: rows x hidden @ hidden x hidden, with as many
# rows (64..512) as keep one float32 matmul near 2**28 multiply-adds.
_MACS = 2**28
_REPEATS = 5


@dataclass(frozen=True)
class CpuDtypeChoice:
    """The dtype auto picked on this CPU and why (`speedup`: float32 time / bfloat16 time, when measured)."""

    dtype: str
    reason: str
    speedup: float | None = None


def cpu_info() -> dict[str, object]:
    """The CPU's model name and flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, object] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and "model" not in info:
            info["model"] = value.strip()
        elif key in ("flags", "features") and "flags" not in info:
            info["flags"] = sorted(set(value.split()))
    return info


def cache_key(info: dict[str, object], hidden_size: int) -> str:
    """What makes a measurement valid: the CPU (model and flags), the torch build and the matmul size."""
    fields = {"cpu": info, "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(), "hidden_size": hidden_size}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def measure_speedup(hidden_size: int, repeats: int = _REPEATS) -> dict[str, float]:
    """Best-of-`repeats` seconds of one matmul in each dtype, the two timed alternately so load affects both alike."""
    rows = max(64, min(512, _MACS // (hidden_size * hidden_size)))
    gen = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(rows, hidden_size, generator=gen), torch.randn(hidden_size, hidden_size, generator=gen)
    operands = {"float32": (a32, b32), "bfloat16": (a32.bfloat16(), b32.bfloat16())}
    best = {name: float("inf") for name in operands}
    for round_ in range(repeats + 1):  # round 0 warms up the kernels and is not kept
        for name, (a, b) in operands.items():
            t0 = time.perf_counter()
            torch.mm(a, b)
            elapsed = time.perf_counter() - t0
            if round_ > 0:
                best[name] = min(best[name], elapsed)
    return {"float32_s": best["float32"], "bfloat16_s": best["bfloat16"], "speedup": best["float32"] / best["bfloat16"]}


def cpu_auto_dtype(hidden_size: int, cache_dir: Path) -> CpuDtypeChoice:
    """The dtype `--model-dtype auto` runs a model of width `hidden_size` in on this CPU.

    Order: the environment variable, then the flags (no bfloat16 instructions
    means float32), then the cached measurement, then a new measurement,
    which is added to the cache (a cache that cannot be written only means
    measuring again next time).
    """
    forced = os.environ.get(ENV)
    if forced:
        if forced not in CHOICES:
            raise ProbekitError(f"{ENV}={forced}: use one of {', '.join(CHOICES)} (or unset it to measure)")
        return CpuDtypeChoice(forced, f"forced by {ENV}")
    info = cpu_info()
    flags = info.get("flags")
    if flags is not None and not BF16_FLAGS & set(flags):
        return CpuDtypeChoice("float32", "the CPU has no bfloat16 instructions")
    path = Path(cache_dir) / CACHE_FILE
    key = cache_key(info, hidden_size)
    cache = _read_cache(path)
    entry = cache.get(key)
    if not (isinstance(entry, dict) and entry.get("dtype") in CHOICES and isinstance(entry.get("speedup"), (int, float))):
        timing = measure_speedup(hidden_size)
        entry = {"dtype": "bfloat16" if timing["speedup"] >= MIN_SPEEDUP else "float32", **timing, "min_speedup": MIN_SPEEDUP,
                 "cpu": info.get("model"), "torch": torch.__version__, "hidden_size": hidden_size,
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            write_json(path, {**cache, key: entry})
        except OSError:
            pass
    return CpuDtypeChoice(entry["dtype"], f"bfloat16 matmuls measured {entry['speedup']:.2f}x float32 (cached in {path})", float(entry["speedup"]))


def _read_cache(path: Path) -> dict:
    """The cached measurements; a missing or damaged cache (it is probekit's own file) reads as empty."""
    try:
        cache = read_json(path)
    except (OSError, ProbekitError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}
