"""The writer lane: extraction's host-side work (states to the host, float16 arrays, HDF5 shards) off the forward's path.

Without it, every batch waits for its states to reach the host and be cast, and every shard waits for its HDF5
image to be written, while the accelerator has nothing queued: the GPU sat idle most of the time
(benchmarks/results/speed-gpu.json: 13% busy at 135M). A lane runs those jobs on one background thread, in the
order they were submitted, with at most `depth` of them outstanding (one running, one waiting), so batch k's states are written while batch
k + 1's forward runs and memory stays bounded (a job holds one batch's kept rows).

A job's exception is re-raised in the caller's thread, unchanged (a `ProbekitError` stays one line), by the
next `submit`, by `Future.result()` and by the lane's exit; jobs submitted after a failure do not run. On the
lane's exit the jobs already submitted finish first, so a shard whose forward was complete when the caller was
interrupted is still written whole (under its temporary name, then renamed, as `probekit.store.write_shard`
always does), and none is half-written. A lane that is off runs each job in the caller, at once: the
synchronous path, to measure against (`--no-overlap`).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

DEPTH = 2  # jobs given to the writer thread and not finished: the one it runs and one waiting


class Lane:
    """Run jobs in submission order on one background thread (`overlap=True`) or in the caller (`overlap=False`)."""

    def __init__(self, overlap: bool = True, depth: int = DEPTH) -> None:
        self.overlap = overlap
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="probekit-writer") if overlap else None
        self._slots = threading.BoundedSemaphore(depth)
        self._error: BaseException | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue `fn(*args)`; blocks while `depth` jobs are outstanding. Raises the error of an earlier job, if one failed."""
        self.raise_error()
        if self._pool is None:
            done: Future = Future()
            done.set_result(fn(*args))  # an error propagates here, as it did before the lane existed
            return done
        self._slots.acquire()
        try:
            future = self._pool.submit(self._run, fn, args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        return future

    def _run(self, fn: Callable[..., Any], args: tuple) -> Any:
        if self._error is not None:
            raise self._error  # a job after a failed one would work on incomplete data
        try:
            return fn(*args)
        except BaseException as exc:
            self._error = exc
            raise

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every submitted job (finishing, or skipping after a failure)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "Lane":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close()
        if exc_type is None:
            self.raise_error()
