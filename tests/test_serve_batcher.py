"""The serve batcher's policy on a real `Batcher` and real threads (no HTTP): closed-loop clients fall into two
cohorts, so one cohort's batch is scored while the other's requests queue; a lone client never waits; a failing
request fails alone."""

from __future__ import annotations

import threading
import time

from probekit.serve.batcher import Batcher

FORWARD_S = 0.02  # what one batch's scoring costs here: long beside a thread switch, short for the suite


class Recorder:
    """`run` for the batcher: squares each request after a fixed pause (the forward), recording every batch's size."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def run(self, requests: list[int]) -> list[int]:
        time.sleep(FORWARD_S)
        self.sizes.append(len(requests))
        return [r * r for r in requests]


def closed_loop(batcher: Batcher, clients: int, per_client: int, round_trip_s: float = 0.0) -> list[str]:
    """`clients` threads, each sending its next request `round_trip_s` after the last is answered (as RL trainer workers
    do over HTTP)."""
    errors: list[str] = []

    def client(c: int) -> None:
        for r in range(per_client):
            x = c * 1000 + r
            got = batcher.submit(x).result(timeout=30)
            time.sleep(round_trip_s)
            if got != x * x:
                errors.append(f"client {c}: {got} != {x * x}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def make(recorder: Recorder, **kw) -> Batcher:
    b = Batcher(recorder.run, size=lambda r: 1, max_tokens=kw.pop("max_tokens", 10_000), max_queue=256,
                max_wait_s=kw.pop("max_wait_s", 0.005), **kw)
    b.start()
    return b


def test_closed_loop_clients_form_two_cohorts_of_half_the_clients():
    rec = Recorder()
    b = make(rec)
    try:
        assert not closed_loop(b, clients=16, per_client=12)
    finally:
        b.close(timeout=10)
    steady = rec.sizes[len(rec.sizes) // 4:]
    assert max(steady) <= 9, rec.sizes  # half of 16 (one early client over at most): never one batch of everyone
    assert sum(steady) / len(steady) >= 6, rec.sizes  # and still batched, not one request at a time
    assert sum(rec.sizes) == 16 * 12 and b.stats.requests == 16 * 12


def test_the_next_cohort_is_queued_while_a_batch_is_scored():
    """The point of the two cohorts: while one batch is scored, the other cohort's answers travel and its next requests
    arrive, so the worker does not wait out the clients' round trip (a quarter of a forward here) between forwards. One batch
    of every client was busy at most forward / (forward + round trip) = 0.8 of the time (measured: 0.74)."""
    rec = Recorder()
    b = make(rec)
    try:
        started = time.perf_counter()
        assert not closed_loop(b, clients=8, per_client=20, round_trip_s=FORWARD_S / 4)
        wall = time.perf_counter() - started
    finally:
        b.close(timeout=10)
    busy = len(rec.sizes) * FORWARD_S
    assert busy / wall > 0.88, (busy, wall, rec.sizes)  # measured: 0.97


def test_a_lone_client_is_never_kept_waiting():
    rec = Recorder()
    b = make(rec, max_wait_s=0.5)  # a wait that would show in every request
    try:
        started = time.perf_counter()
        assert not closed_loop(b, clients=1, per_client=10)
        wall = time.perf_counter() - started
    finally:
        b.close(timeout=10)
    assert rec.sizes == [1] * 10
    assert wall < 10 * FORWARD_S + 0.4, wall  # far below one 0.5 s wait
