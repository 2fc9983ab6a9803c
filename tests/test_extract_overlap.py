"""The writer lane (`--overlap`): the same stores, errors, progress and interrupts as the synchronous path.

Extraction with `overlap=True` (opt-in, `--overlap`) casts, checks and writes on a writer thread while the next batch's
forward runs (probekit.extract.lane). Everything a user sees must be what `--no-overlap` gives: the arrays of the
store, byte for byte; the one-line errors of a failed write (a real file-size limit, as a full disk) and of
non-finite states; the progress counts; a killed run's complete shards and its resume. The GPU side of the lane
(pinned, non-blocking copies) runs only on a GPU: `make bench-gpu` compares the two stores there.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
from pathlib import Path

import h5py
import pytest
import torch
from filelock import FileLock

from probekit.data.schema import write_trajectories
from probekit.errors import ProbekitError
from probekit.extract import run as run_mod
from probekit.extract.lane import Lane
from probekit.extract.run import extract, lock_name
from probekit.models import load_model
from probekit.store import Store, shard_name
from tests.helpers import ProgressRecorder, assert_same_store, extract_options, read_store, shared_prompt_file, toy_trajectories

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def tiny_bf16(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("overlap-data")
    write_trajectories(root / "toy.jsonl", toy_trajectories())
    return {"toy": root / "toy.jsonl", "shared": shared_prompt_file(root / "shared.jsonl")}


def _attrs(store: Path) -> list[dict]:
    """Every shard's attributes but its timing."""
    out = []
    for path in sorted(store.glob("shard-*.h5")):
        with h5py.File(path, "r") as fh:
            out.append({k: v for k, v in fh.attrs.items() if k != "seconds"})
    return out


def _assert_identical(a: Path, b: Path) -> None:
    ra, rb = read_store(a), read_store(b)
    assert ra.keys() == rb.keys() and ra
    for key in ra:
        if ra[key].dtype == object:  # strings: their bytes, not the pointers
            assert ra[key].tolist() == rb[key].tolist(), key
        else:
            assert ra[key].dtype == rb[key].dtype and ra[key].tobytes() == rb[key].tobytes(), key
    assert _attrs(a) == _attrs(b)


@pytest.mark.parametrize("case", [
    dict(model="float32", dtype="float32", data="toy", padding_side="left", max_batch_tokens=64),
    dict(model="bfloat16", dtype="float16", data="shared", padding_side="right", max_batch_tokens=None),
])
def test_overlap_on_and_off_write_the_same_arrays(case, tiny, tiny_bf16, data, tmp_path):
    """Several batches and shards (64-token batches; 4 trajectories a shard), shared prompts, both storage dtypes."""
    loaded = tiny if case["model"] == "float32" else tiny_bf16
    opts = dict(dtype=case["dtype"], padding_side=case["padding_side"], max_batch_tokens=case["max_batch_tokens"])
    on = extract(extract_options(data[case["data"]], tmp_path / "on", overlap=True, **opts), loaded=loaded)
    off = extract(extract_options(data[case["data"]], tmp_path / "off", overlap=False, **opts), loaded=loaded)
    assert on.complete and off.complete and on.shards_done == off.shards_done and len(on.shards_done) >= 3
    _assert_identical(tmp_path / "on", tmp_path / "off")
    timing = ("seconds", "tokens_per_second")
    assert {k: v for k, v in on.manifest["stats"].items() if k not in timing} == {k: v for k, v in off.manifest["stats"].items() if k not in timing}
    assert "overlap" not in on.manifest["key"]  # the stores are the same, so either resumes the other


def test_progress_counts_are_the_same_with_and_without_overlap(tiny, data, tmp_path):
    def events(overlap: bool) -> list:
        recorder = ProgressRecorder()
        extract(extract_options(data["toy"], tmp_path / f"p{overlap}", max_batch_tokens=64, overlap=overlap), loaded=tiny, progress=recorder)
        return recorder.events

    on, off = events(True), events(False)
    assert on == off and len(on) > 4 and all(e[2] for e in on if e[0] == "advance")  # reported from the caller's thread


def test_a_killed_overlapped_run_keeps_its_finished_shard_and_resumes_to_the_same_store(tiny, data, tmp_path, monkeypatch):
    extract(extract_options(data["toy"], tmp_path / "ref", overlap=False), loaded=tiny)
    real_build = run_mod.build_shard
    calls = {"n": 0}

    def dying_build(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while computing shard 1: shard 0's write may still be on the writer thread
        return real_build(*a, **kw)

    monkeypatch.setattr(run_mod, "build_shard", dying_build)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        extract(extract_options(data["toy"], cut, overlap=True), loaded=tiny)
    monkeypatch.setattr(run_mod, "build_shard", real_build)
    assert sorted(p.name for p in cut.glob("shard-*.h5")) == [shard_name(0)]  # written whole before the error left extract
    assert not list(cut.glob(".*.tmp"))
    for s in range(3):  # no lock is still held by this process
        FileLock(cut / lock_name(s), timeout=0).acquire().lock.release()
    resumed = extract(extract_options(data["toy"], cut, overlap=True), loaded=tiny)
    assert resumed.shards_skipped == [0] and resumed.shards_done == [1, 2] and resumed.complete
    assert_same_store(tmp_path / "ref", cut)


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """Files of this process may not grow past `limit` bytes (SIGXFSZ ignored): a write past it fails with EFBIG, as
    on a full disk. A real limit on this process, lifted on exit (tests/test_store_integrity.py does it to a child)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_shard_write_failing_on_the_writer_thread_is_the_same_one_line_error_and_commits_nothing(tiny, data, tmp_path):
    """The shards (~100 kB) cannot be written under the limit, the manifest and pairs (< 16 kB) can."""
    errors = {}
    for overlap in (True, False):
        out = tmp_path / f"o{overlap}"
        with _file_size_limit(16_000), pytest.raises(ProbekitError) as err:
            extract(extract_options(data["toy"], out, layers="1,2,4", overlap=overlap), loaded=tiny)
        errors[overlap] = str(err.value).replace(str(out), "OUT")
        assert not list(out.glob("shard-*.h5")) and not list(out.glob(".*.tmp"))  # not shard 0, nor a later one
        for s in range(3):
            FileLock(out / lock_name(s), timeout=0).acquire().lock.release()
    assert errors[True] == errors[False] and errors[True].startswith(f"OUT/{shard_name(0)}: cannot write")
    assert "(File too large)" in errors[True] and "\n" not in errors[True]
    done = extract(extract_options(data["toy"], tmp_path / "oTrue", layers="1,2,4"), loaded=tiny)  # the limit lifted: resumes
    assert done.complete and done.shards_done == [0, 1, 2] and Store(tmp_path / "oTrue").verify()["checksums"]


def test_non_finite_states_found_on_the_writer_thread_name_the_same_trajectory(tiny_model_dir, data, tmp_path):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        loaded.model.get_input_embeddings().weight.mul_(1e6)  # residual stream far beyond float16's range
    errors = {}
    for overlap in (True, False):
        with pytest.raises(ProbekitError, match="overflow float16") as err:
            extract(extract_options(data["toy"], tmp_path / f"ov{overlap}", dtype="float16", layers="1", overlap=overlap), loaded=loaded)
        errors[overlap] = str(err.value)
        assert not list((tmp_path / f"ov{overlap}").glob("shard-*.h5"))
    assert errors[True] == errors[False] and errors[True].startswith("trajectory '")


# ---- the lane itself --------------------------------------------------------------------------------------------


def test_lane_runs_jobs_in_order_on_one_thread_and_bounds_what_waits():
    gate, order, threads = threading.Event(), [], set()

    def job(k: int) -> int:
        threads.add(threading.current_thread().name)
        if k == 0:
            gate.wait(10)
        order.append(k)
        return k

    with Lane(overlap=True, depth=2) as lane:
        first, second = lane.submit(job, 0), lane.submit(job, 1)  # one running (held at the gate), one waiting
        third = threading.Thread(target=lane.submit, args=(job, 2))
        third.start()
        third.join(0.3)
        assert third.is_alive()  # a third waits for a slot: memory stays bounded
        gate.set()
        third.join(10)
        assert first.result(10) == 0 and second.result(10) == 1
    assert order == [0, 1, 2] and len(threads) == 1 and threading.main_thread().name not in threads


def test_lane_error_reaches_the_caller_and_later_jobs_do_not_run():
    ran = []

    def bad() -> None:
        raise ProbekitError("shard.h5: cannot write this shard (No space left on device); nothing of it was kept")

    with pytest.raises(ProbekitError, match="No space left") as err:
        with Lane(overlap=True) as lane:
            lane.submit(bad)
            later = lane.submit(ran.append, 1)  # may be queued before the failure is known: then it is skipped
            later.exception(10)
            lane.submit(ran.append, 2)  # the failure is known by now: raised here
    assert ran == [] and str(err.value).startswith("shard.h5: cannot write")
    off = Lane(overlap=False)
    with pytest.raises(ProbekitError, match="No space left"):
        off.submit(bad)  # off: at once, in the caller, as before the lane existed
