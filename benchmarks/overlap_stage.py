"""benchmarks/overlap.py's measurement, shared with run_gpu.py's `overlap` stage: `extract --overlap` against
`--no-overlap` in one process (see benchmarks/overlap.py for what is measured and why)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import plain_log as log, timed
from benchmarks.speed_stages import input_lengths, probekit_extract, warm_up

MODES = {"overlap": True, "no_overlap": False}


def stores_identical(a: Path, b: Path) -> bool:
    """The same offsets, positions and states (every layer, stored dtype, byte for byte) in every shard."""
    from probekit.store import Store

    sa, sb = Store(a), Store(b)
    if len(sa.shard_paths) != len(sb.shard_paths) or sa.layers != sb.layers:
        return False
    if not (np.array_equal(sa.meta.row_start, sb.meta.row_start) and np.array_equal(sa.positions(), sb.positions())):
        return False
    return all(sa.shard_states(s, layer, as_float32=False).tobytes() == sb.shard_states(s, layer, as_float32=False).tobytes()
               for layer in sa.layers for s in range(len(sa.shard_paths)))


def host_side(loaded, subset: Path) -> dict:
    """Seconds of the host-side preparation extraction does before its forwards: tokenising every trajectory
    (`encode_all`) and padding each length-bucketed batch (`pad_batch`, as `build_shard` pads them)."""
    from probekit.data.schema import read_trajectories
    from probekit.extract.plan import batch_token_budget, length_buckets
    from probekit.extract.render import Rendering, encode_all, resolve_template
    from probekit.extract.run import pad_batch

    trajectories, _ = read_trajectories(subset)
    rendering = Rendering.of(loaded.tokenizer, resolve_template("auto", loaded.tokenizer), 1024)
    t0 = time.perf_counter()
    encoded = encode_all(trajectories, loaded.tokenizer, rendering, subset)
    encode_s = time.perf_counter() - t0
    buckets = length_buckets([len(e.input_ids) for e in encoded], batch_token_budget(None, loaded.device.type))
    t0 = time.perf_counter()
    for batch in buckets:
        pad_batch([encoded[i].input_ids for i in batch], 0, left=False)
    pad_s = time.perf_counter() - t0
    return {"tokenise_seconds": round(encode_s, 4), "pad_seconds": round(pad_s, 4), "batches": len(buckets),
            "pad_ms_per_batch": round(pad_s / max(1, len(buckets)) * 1000, 3)}


def lane_work(loaded, store_path: Path, work: Path) -> dict:
    """Seconds of the work the lane moves off the forward's path, timed alone in this thread: the cast and checks of
    every stored row (`checked_states`, from the model's dtype to the store's) and the write of every shard
    (`write_shard`, the store's own arrays written again). The most the overlap can hide on a CPU."""
    import torch

    from probekit.extract.forward import STORE_DTYPES, checked_states
    from probekit.store import Store, StoredTrajectory, shard_data, write_shard

    store = Store(store_path)
    torch_dtype, np_dtype = STORE_DTYPES[store.manifest["dtype"]]
    cast = write = 0.0
    scratch = work / "lane-work"
    scratch.mkdir(parents=True, exist_ok=True)
    for s in range(len(store.shard_paths)):
        states = {layer: store.shard_states(s, layer, as_float32=False) for layer in store.layers}
        for layer, arr in states.items():
            x = torch.from_numpy(arr.astype(np.float32)).to(loaded.dtype)
            t0 = time.perf_counter()
            checked_states(x, torch_dtype, "row", layer, store.manifest["dtype"])
            cast += time.perf_counter() - t0
        positions = store.shard_positions(s)
        data = shard_data([StoredTrajectory("t", "g", None, None, positions, states, len(positions))], store.layers, np_dtype,
                          n_tokens_processed=len(positions))
        t0 = time.perf_counter()
        write_shard(scratch / f"shard-{s:05d}.h5", data)
        write += time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return {"cast_and_check_seconds": round(cast, 4), "shard_write_seconds": round(write, 4), "rows": int(store.n_rows),
            "note": "timed alone, after the runs: the work the writer thread takes over (from the model's dtype to the store's)"}


def measure(loaded, subset: Path, work: Path, *, repeats: int, shard_size: int, layer: int, model: str,
            profile_chunk=None) -> dict:
    """Extraction with the overlap on and off, interleaved, `repeats` times each; medians, the stores compared, the
    host-side preparation, and (with `profile_chunk`, run_gpu.py's profiler, on a GPU) each mode's GPU busy fraction."""
    import torch

    n_in = sum(input_lengths(loaded, subset))
    warm_up(loaded)
    warm = work / "overlap-warm.jsonl"  # one untimed run of each mode first: neither pays first-call costs in its timed runs
    warm.write_text("".join(subset.read_text().splitlines(keepends=True)[:4]))
    for mode in MODES:
        shutil.rmtree(work / "overlap-warm", ignore_errors=True)
        probekit_extract(loaded, warm, work / "overlap-warm", shard_size=2, layer=layer, model=model, overlap=MODES[mode])
    shutil.rmtree(work / "overlap-warm", ignore_errors=True)
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_seconds: dict[str, list[float]] = {m: [] for m in MODES}
    order_log = []
    for r in range(repeats):
        order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]
        order_log.append(order)
        for mode in order:
            out = work / f"overlap-{mode}"
            shutil.rmtree(out, ignore_errors=True)  # a fresh store each time: nothing is resumed
            res, wall, cpu = timed(lambda: probekit_extract(loaded, subset, out, shard_size=shard_size, layer=layer, model=model,
                                                            overlap=MODES[mode]), sync=True)
            assert res.complete, mode
            seconds[mode].append(wall)
            cpu_seconds[mode].append(cpu)
        log(f"  overlap repeat {r + 1}/{repeats}: " + ", ".join(f"{m} {n_in / v[-1]:,.0f} tok/s" for m, v in seconds.items()))
    med = {m: float(np.median(v)) for m, v in seconds.items()}
    per_repeat = [b / a for a, b in zip(seconds["overlap"], seconds["no_overlap"])]
    result = {
        "n_trajectories": len(input_lengths(loaded, subset)), "n_input_tokens": n_in, "layer": layer, "shard_size": shard_size,
        "device": str(loaded.device), "model_dtype": str(loaded.dtype).replace("torch.", ""), "repeats": repeats, "orders": order_log,
        "seconds": {m: [round(x, 4) for x in v] for m, v in seconds.items()},
        "cpu_seconds": {m: [round(x, 4) for x in v] for m, v in cpu_seconds.items()},
        "tokens_per_s_median": {m: round(n_in / s, 1) for m, s in med.items()},
        "speedup_overlap_vs_no_overlap_median": round(med["no_overlap"] / med["overlap"], 4),
        "speedup_per_repeat": [round(x, 4) for x in per_repeat],
        "speedup_per_repeat_range": [round(min(per_repeat), 4), round(max(per_repeat), 4)],
        "stores_identical": stores_identical(work / "overlap-overlap", work / "overlap-no_overlap"),
        "torch_threads": torch.get_num_threads(),
    }
    prep = host_side(loaded, subset)
    prep["fraction_of_no_overlap_extraction"] = round((prep["tokenise_seconds"] + prep["pad_seconds"]) / med["no_overlap"], 4)
    prep["pad_fraction_of_no_overlap_extraction"] = round(prep["pad_seconds"] / med["no_overlap"], 4)
    result["host_side_preparation"] = prep
    moved = lane_work(loaded, work / "overlap-no_overlap", work)
    moved["fraction_of_no_overlap_extraction"] = round((moved["cast_and_check_seconds"] + moved["shard_write_seconds"]) / med["no_overlap"], 4)
    result["work_moved_to_the_writer_thread"] = moved
    if profile_chunk is not None:
        busy = {}
        for mode in MODES:
            shutil.rmtree(work / f"overlap-profile-{mode}", ignore_errors=True)
            busy[mode] = profile_chunk(loaded, subset, work / f"overlap-profile-{mode}", shard_size, 1, model, layer=layer,
                                       overlap=MODES[mode])
            shutil.rmtree(work / f"overlap-profile-{mode}", ignore_errors=True)
        if loaded.device.type == "cuda":
            result["gpu_busy"] = busy
            result["gpu_busy_fraction"] = {m: busy[m]["gpu_busy_fraction"] for m in MODES}
        else:  # a smoke run: the profiler ran, but there is no GPU to be busy
            result["profile_without_gpu"] = {m: {"wall_seconds_profiled": b["wall_seconds_profiled"]} for m, b in busy.items()}
    for mode in MODES:
        shutil.rmtree(work / f"overlap-{mode}", ignore_errors=True)
    return result
