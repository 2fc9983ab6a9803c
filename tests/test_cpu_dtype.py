"""`--model-dtype auto` on a CPU: measured once, cached per CPU/torch/width, honoured, overridable.

The CPU is described to probekit by a cpuinfo file written here (so the tests
run the same on CPUs with and without bfloat16 instructions); the matmul
timings are real measurements on this machine.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from probekit import cpu_dtype
from probekit.cpu_dtype import CACHE_FILE, ENV, MIN_SPEEDUP, cpu_auto_dtype, measure_speedup
from probekit.errors import ProbekitError
from probekit.models import load_model

HIDDEN = 32  # the tiny model's width


def _cpuinfo(tmp_path, monkeypatch, flags: str, model: str = "Test CPU 9000") -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\nmodel name\t: {model}\nflags\t\t: {flags}\n")
    monkeypatch.setattr(cpu_dtype, "_CPUINFO", path)


def _no_measuring(*_a, **_k):
    raise AssertionError("measured although the choice was known")


@pytest.fixture()
def measured(tmp_path, monkeypatch):
    """A CPU with bfloat16 instructions, the environment variable unset, an empty cache; counts measurements."""
    monkeypatch.delenv(ENV, raising=False)
    _cpuinfo(tmp_path, monkeypatch, "fpu sse2 avx2 avx512f avx512_bf16")
    calls = []
    real = cpu_dtype.measure_speedup

    def counting(hidden_size, *a, **k):
        calls.append(hidden_size)
        return real(hidden_size, *a, **k)

    monkeypatch.setattr(cpu_dtype, "measure_speedup", counting)
    return calls


def test_measurement_times_both_dtypes_quickly():
    t0 = time.perf_counter()
    m = measure_speedup(576)  # SmolLM2's width
    assert time.perf_counter() - t0 < 5.0  # ~0.1 s alone on a Zen 4 core pair; generous for a loaded machine
    assert m["float32_s"] > 0 and m["bfloat16_s"] > 0
    assert m["speedup"] == pytest.approx(m["float32_s"] / m["bfloat16_s"])


def test_auto_measures_once_and_caches_the_choice(measured, tmp_path):
    first = cpu_auto_dtype(HIDDEN, tmp_path / "cache")
    assert measured == [HIDDEN]
    (entry,) = json.loads((tmp_path / "cache" / CACHE_FILE).read_text()).values()
    assert entry["dtype"] == ("bfloat16" if entry["speedup"] >= MIN_SPEEDUP else "float32") == first.dtype
    assert entry["speedup"] == pytest.approx(entry["float32_s"] / entry["bfloat16_s"]) == pytest.approx(first.speedup)
    assert entry["cpu"] == "Test CPU 9000" and entry["torch"] == torch.__version__ and entry["hidden_size"] == HIDDEN
    assert cpu_auto_dtype(HIDDEN, tmp_path / "cache") == first and measured == [HIDDEN]  # read back, not measured again
    cpu_auto_dtype(2 * HIDDEN, tmp_path / "cache")  # another width is another measurement, kept beside the first
    assert measured == [HIDDEN, 2 * HIDDEN] and len(json.loads((tmp_path / "cache" / CACHE_FILE).read_text())) == 2


def test_cache_is_keyed_by_cpu_and_torch(measured, tmp_path, monkeypatch):
    cpu_auto_dtype(HIDDEN, tmp_path)
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    cpu_auto_dtype(HIDDEN, tmp_path)
    _cpuinfo(tmp_path, monkeypatch, "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16", model="Other CPU")
    cpu_auto_dtype(HIDDEN, tmp_path)
    assert measured == [HIDDEN] * 3 and len(json.loads((tmp_path / CACHE_FILE).read_text())) == 3


def test_damaged_cache_is_measured_again(measured, tmp_path):
    (tmp_path / CACHE_FILE).write_text("{not json")
    choice = cpu_auto_dtype(HIDDEN, tmp_path)
    assert measured == [HIDDEN] and choice.dtype in ("float32", "bfloat16")
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 1


def test_cpu_without_bfloat16_instructions_gets_float32_unmeasured(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    _cpuinfo(tmp_path, monkeypatch, "fpu sse2 avx2 avx512f")
    monkeypatch.setattr(cpu_dtype, "measure_speedup", _no_measuring)
    choice = cpu_auto_dtype(HIDDEN, tmp_path)
    assert choice.dtype == "float32" and "no bfloat16" in choice.reason and not (tmp_path / CACHE_FILE).exists()


def _set_cached(cache, dtype: str, speedup: float) -> None:
    data = json.loads((cache / CACHE_FILE).read_text())
    for entry in data.values():
        entry.update(dtype=dtype, speedup=speedup)
    (cache / CACHE_FILE).write_text(json.dumps(data))


def test_load_model_honours_the_cached_choice_and_is_overridable(measured, tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cpu_auto_dtype(HIDDEN, cache)
    monkeypatch.setattr(cpu_dtype, "measure_speedup", _no_measuring)
    for dtype, speedup in (("bfloat16", 3.0), ("float32", 0.8)):
        _set_cached(cache, dtype, speedup)
        lm = load_model(str(tiny_model_dir), device="cpu", dtype="auto", cache_dir=cache)
        assert lm.dtype == getattr(torch, dtype) and next(lm.model.parameters()).dtype == lm.dtype
        assert f"{speedup:.2f}x" in lm.dtype_choice
    # cached says bfloat16; the environment variable and an explicit dtype both win
    _set_cached(cache, "bfloat16", 3.0)
    monkeypatch.setenv(ENV, "float32")
    assert load_model(str(tiny_model_dir), device="cpu", dtype="auto", cache_dir=cache).dtype == torch.float32
    monkeypatch.delenv(ENV)
    assert load_model(str(tiny_model_dir), device="cpu", dtype="float32", cache_dir=cache).dtype == torch.float32
    _set_cached(cache, "float32", 0.8)
    monkeypatch.setenv(ENV, "bfloat16")
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="auto", cache_dir=cache)
    assert lm.dtype == torch.bfloat16 and lm.dtype_choice == f"auto: forced by {ENV}"
    assert lm.model.model.rotary_emb.inv_freq.dtype == torch.float32  # loaded in bfloat16, not cast afterwards


def test_bad_environment_value_is_one_line_error(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "fp8")
    with pytest.raises(ProbekitError, match=f"{ENV}=fp8: use one of float32, bfloat16"):
        load_model(str(tiny_model_dir), device="cpu", cache_dir=tmp_path)
