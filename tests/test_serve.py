"""`probekit serve`: the real server in a subprocess on loopback, real HTTP clients (httpx, and raw sockets for clients
that misbehave at the byte level).

Two servers run for the module: `server` (a baseline folder, on_missing zero) for the scoring, protocol and
bad-input tests, and `guarded` (a bearer token, a queue of one, small batches and bodies) for the auth, overload,
oversize and SIGTERM tests. Expected values come from `RewardProbe.score` in this process on the same texts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKEN = "test-token-0123456789abcdef"
TOL = dict(rtol=2e-3, atol=2e-3)  # float16 states: a batch's padding may round them differently


@dataclasses.dataclass
class World:
    ckpt: Path
    model: Path
    baseline: Path
    prompts: list[str]
    completions: list[str]
    rp: object


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> World:
    import torch

    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.models import load_model
    from probekit.reward import RewardProbe
    from tests.helpers import fit, toy_trajectories

    root = tmp_path_factory.mktemp("serve")
    trajs = toy_trajectories(24)
    trajs[-1] = dataclasses.replace(trajs[-1], prompt="A very long question. " * 40)  # cut to max_length, and counted
    write_trajectories(root / "data.jsonl", trajs)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    extract(ExtractOptions(trajectories=root / "data.jsonl", out=root / "store", layers="4", template="chat", dtype="float16",
                           max_length=96), loaded=loaded)
    torch.manual_seed(0)
    ckpt = fit(root / "store", root / "ckpt", layer=4, n_boot=20).path
    rp = RewardProbe.load(ckpt, device="cpu", model=loaded)
    prompts, completions = [t.prompt for t in trajs], [t.completion for t in trajs]
    baseline = _write_baseline(root / "baseline", rp, prompts[:12], completions[:12])
    return World(ckpt, tiny_model_dir, baseline, prompts, completions, rp)


def _write_baseline(folder: Path, rp, prompts: list[str], completions: list[str]) -> Path:
    """A `probekit baseline` folder (its documented layout) whose baseline for each prompt is the mean of the rewards of its
    completions here plus 0.25, so contrastive rewards differ visibly from raw ones."""
    result = rp.score(prompts, completions)
    rows: dict[str, dict] = {}
    for key, prompt, r in zip(result.prompt_keys, prompts, result.rewards):
        rows.setdefault(key, {"prompt_key": key, "prompt": prompt, "rewards": []})["rewards"].append(float(r) + 0.25)
    folder.mkdir()
    with open(folder / "baselines.jsonl", "w", encoding="utf-8") as fh:
        for row in rows.values():
            fh.write(json.dumps({**row, "k": len(row["rewards"]), "mean": float(np.mean(row["rewards"])), "std": float(np.std(row["rewards"]))}) + "\n")
    (folder / "baseline.json").write_text(json.dumps({"format": "probekit-baseline", "checkpoint_fingerprint": rp.checkpoint.fingerprint,
                                                      "k": 2, "n_prompts": len(rows), "source": "tests/test_serve.py"}))
    return folder


def _env(token: str | None) -> dict[str, str]:
    """This process's environment with the server's token variable set to `token` (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != "PROBEKIT_SERVE_TOKEN"}
    return {**env, "PROBEKIT_SERVE_TOKEN": token} if token else env


class Server:
    """`python -m probekit_cli.main serve --port 0 ...` in a subprocess: its URL read from stdout, stderr kept in a file."""

    def __init__(self, world: World, folder: Path, *args: str, token: str | None = None):
        self.stderr_path = folder / "stderr.txt"
        cmd = [sys.executable, "-m", "probekit_cli.main", "--threads", "1", "serve", "--ckpt", str(world.ckpt), "--model",
               str(world.model), "--device", "cpu", "--port", "0", *args]
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=_env(token))
        self.url = self._read_url(timeout=90)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def _read_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("http://"):
                    return line.strip()
            if self.proc.poll() is not None:
                break
        self.proc.kill()
        raise AssertionError(f"the server did not start:\n{self.stderr()[-3000:]}")

    @property
    def address(self) -> tuple[str, int]:
        u = urlparse(self.url)
        return u.hostname, u.port

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.client.close()
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    s = Server(world, tmp_path_factory.mktemp("server"), "--baseline", str(world.baseline), "--on-missing", "zero")
    yield s
    assert s.stop() == 0
    assert "Traceback" not in s.stderr(), s.stderr()[-3000:]  # no bad request reached a bug


@pytest.fixture(scope="module")
def guarded(world, tmp_path_factory):
    s = Server(world, tmp_path_factory.mktemp("guarded"), "--max-queue", "1", "--max-batch-tokens", "64",
               "--max-body-bytes", "1000000", token=TOKEN)
    yield s
    s.stop()
    assert "Traceback" not in s.stderr(), s.stderr()[-3000:]


def _one_line_error(response: httpx.Response, status: int, *needles: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"], body
    for needle in needles:
        assert needle in body["error"], body["error"]
    return body["error"]


def _rendered(rp, prompt: str) -> str:
    return rp.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)


# ---- scoring --------------------------------------------------------------------------------------------------


def test_score_equals_the_api_with_truncation_counted_and_contrastive_rewards(world, server):
    expected = world.rp.score(world.prompts, world.completions)
    got = server.client.post("/score", json={"prompts": world.prompts, "completions": world.completions}).json()
    np.testing.assert_allclose(got["rewards"], expected.rewards, **TOL)
    assert got["completion_tokens"] == expected.completion_tokens.tolist()
    assert got["truncated_tokens"] == expected.truncated_tokens.tolist() and got["n_truncated"] == expected.n_truncated
    assert got["truncated_tokens"][-1] > 0  # the long prompt
    # the baseline covers the first 12 items' prompts (mean = their rewards + 0.25); the others are scored unpenalised
    has = np.isin(np.arange(len(world.prompts)), np.flatnonzero([p in world.prompts[:12] for p in world.prompts]))
    assert got["has_baseline"] == has.tolist()
    raw = np.asarray(got["rewards"])
    np.testing.assert_allclose(np.asarray(got["contrastive_rewards"])[~has], raw[~has], **TOL)
    assert np.all(np.asarray(got["contrastive_rewards"])[has] < raw[has])


def test_messages_and_rendered_prompts_score_as_plain_prompts(world, server):
    prompts, completions = world.prompts[:5], world.completions[:5]
    plain = server.client.post("/score", json={"prompts": prompts, "completions": completions}).json()["rewards"]
    messages = [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions)]
    np.testing.assert_allclose(server.client.post("/score", json={"messages": messages}).json()["rewards"], plain, **TOL)
    rendered = [_rendered(world.rp, p) for p in prompts]
    got = server.client.post("/score", json={"prompts": rendered, "completions": completions, "rendered": True}).json()
    np.testing.assert_allclose(got["rewards"], plain, **TOL)


def test_openrlhf_queries_ending_in_eos_or_end_of_turn_get_the_plain_reward(world, server):
    """OpenRLHF sends decode(prompt + response tokens): the chat template's prompt text, the response, its closing marker."""
    rp = world.rp
    prompts, completions = world.prompts[9:15], world.completions[9:15]  # items 9-11 have a baseline, 12-14 none
    expected = rp.score(prompts, completions)
    plain = expected.rewards
    rendered = [_rendered(rp, p) for p in prompts]
    close = rp.tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": "X"}],
                                             tokenize=False).split("X", 1)[1]
    for suffix in ("", rp.tokenizer.eos_token, close, close + rp.tokenizer.eos_token):
        body = {"query": [p + c + suffix for p, c in zip(rendered, completions)], "prompts": rendered, "labels": ["7"] * 6}
        got = server.client.post("/get_reward", json=body).json()
        np.testing.assert_allclose(got["scores"], plain, **TOL)
        np.testing.assert_allclose(got["extra_logs"]["probe_reward"], plain, **TOL)
        assert got["extra_logs"]["truncated_tokens"] == expected.truncated_tokens.tolist()  # cut as in training, counted
        assert got["n_truncated"] == expected.n_truncated > 0
        # with a baseline, the RL reward is the contrastive one (Shen et al. 2024); unpenalised where there is none
        assert got["rewards"] == got["extra_logs"]["contrastive_reward"]
        assert np.all(np.asarray(got["rewards"][:3]) < np.asarray(got["scores"][:3]))
        np.testing.assert_allclose(got["rewards"][3:], got["scores"][3:], **TOL)
    one = server.client.post("/get_reward", json={"query": [rendered[0] + completions[0]], "prompts": [rendered[0]]}).json()
    np.testing.assert_allclose(one["scores"], plain[:1], **TOL)  # labels may be left out


def test_concurrent_clients_each_get_their_own_results_from_merged_batches(world, server):
    before = server.client.get("/health").json()
    n_clients, per_client = 16, 4
    expected = world.rp.score(world.prompts, world.completions).rewards
    barrier = threading.Barrier(n_clients)
    errors: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            barrier.wait()
            for r in range(per_client):
                items = [(c * 7 + r * 3 + j) % len(world.prompts) for j in range(1 + (c + r) % 3)]
                body = {"prompts": [world.prompts[i] for i in items], "completions": [world.completions[i] for i in items]}
                got = http.post("/score", json=body).json()["rewards"]
                if not np.allclose(got, expected[items], **TOL):
                    errors.append(f"client {c} request {r}: {got} != {expected[items].tolist()}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    after = server.client.get("/health").json()
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == n_clients * per_client and batches < requests  # requests were merged into shared forwards
    assert after["pending"] == 0


# ---- bad input --------------------------------------------------------------------------------------------------

LONE_SURROGATE = b'{"prompts": ["\\ud800"], "completions": ["x"]}'
BAD_BODIES = [
    ("/score", b"{bad", 400, "not JSON"),
    ("/score", b"", 400, "empty body"),
    ("/score", b"\xff\xfe", 400, "not UTF-8"),
    ("/score", b"[1, 2]", 400, "must be a JSON object"),
    ("/score", b"[" * 100000, 400, "JSON"),
    ("/score", b'{"completions": ["x"]}', 400, "missing field 'prompts'"),
    ("/score", b'{"prompts": "Q?", "completions": ["x"]}', 400, "'prompts' must be a list of strings, not a string"),
    ("/score", b'{"prompts": ["Q?", 3], "completions": ["x", "y"]}', 400, "prompts[1] must be a string, not a number"),
    ("/score", b'{"prompts": ["Q?"], "completions": ["x", "y"]}', 400, "'prompts' has 1 item but 'completions' has 2"),
    ("/score", b'{"prompts": ["Q?"], "completions": ["x"], "rendered": "yes"}', 400, "'rendered' must be true or false"),
    ("/score", b'{"prompts": ["Q?"], "completion": ["x"]}', 400, "unknown field 'completion'"),
    ("/score", b'{"messages": "hi"}', 400, "'messages' must be a list"),
    ("/score", b'{"messages": [[{"role": "user", "content": "Q?"}]]}', 422, "conversation 1"),
    ("/score", b'{"messages": [[{"role": "user", "content": "Q?"}, {"role": "assistant"}]]}', 422, "conversation 1"),
    ("/score", LONE_SURROGATE, 400, "prompts[0] is not valid Unicode"),
    ("/score", b'{"prompts": ["Q?"], "completions": [""]}', 422, "zero tokens"),
    ("/get_reward", b'{"prompts": ["Q?"]}', 400, "missing field 'query'"),
    ("/get_reward", b'{"query": ["Q? A"]}', 400, "missing field 'prompts'"),
    ("/get_reward", b'{"query": ["Q? A", "R? B"], "prompts": ["Q?", "S?"]}', 400, "query[1] does not start with prompts[1]"),
    ("/get_reward", b'{"query": ["Q? A"], "prompts": ["Q?"], "labels": [1, 2]}', 400, "but 'labels' has 2"),
    ("/get_reward", b'{"query": ["Q? A"], "prompts": ["Q?"], "labels": 5}', 400, "'labels' must be a list"),
    ("/nowhere", b"{}", 404, "Not Found"),
]


@pytest.mark.parametrize("path,body,status,needle", BAD_BODIES, ids=[f"{p}-{n}" for p, _, _, n in BAD_BODIES])
def test_bad_requests_get_a_4xx_with_one_line(server, path, body, status, needle):
    _one_line_error(server.client.post(path, content=body, headers={"Content-Type": "application/json"}), status, needle)


def test_a_wrong_method_gets_405_and_the_server_keeps_scoring(world, server):
    _one_line_error(server.client.get("/score"), 405, "Method Not Allowed")
    got = server.client.post("/score", json={"prompts": world.prompts[:2], "completions": world.completions[:2]})
    np.testing.assert_allclose(got.json()["rewards"], world.rp.score(world.prompts[:2], world.completions[:2]).rewards, **TOL)


def test_oversize_bodies_get_413_declared_or_streamed(guarded):
    big = json.dumps({"prompts": ["x" * 1_100_000], "completions": ["y"]}).encode()
    _one_line_error(guarded.client.post("/score", content=big), 413, "--max-body-bytes 1000000")
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: counted as it streams
    _one_line_error(guarded.client.post("/score", content=chunks), 413, "--max-body-bytes 1000000")


def test_clients_that_disconnect_mid_request_do_not_break_the_server(world, server):
    body = json.dumps({"prompts": world.prompts, "completions": world.completions}).encode()
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(server.address) as sock:  # gone halfway through the body
        sock.sendall(head + body[: len(body) // 2])
    with socket.create_connection(server.address) as sock:  # gone before the answer
        sock.sendall(head + body)
    with socket.create_connection(server.address) as sock:  # gone halfway through the headers
        sock.sendall(head[:20])
    time.sleep(0.3)
    got = server.client.post("/score", json={"prompts": world.prompts[:3], "completions": world.completions[:3]})
    np.testing.assert_allclose(got.json()["rewards"], world.rp.score(world.prompts[:3], world.completions[:3]).rewards, **TOL)
    assert server.proc.poll() is None and server.client.get("/health").json()["status"] == "ok"


# ---- auth, overload, shutdown --------------------------------------------------------------------------------------


def _cli(world: World, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probekit_cli.main", "serve", "--ckpt", str(world.ckpt), *args],
                          capture_output=True, text=True, env=_env(token), timeout=60)


def test_listening_beyond_loopback_needs_a_long_enough_token(world):
    for args, token, needle in ((("--host", "0.0.0.0"), None, "reachable from other machines"),
                                (("--host", "10.1.2.3", "--token", "short"), None, "at least 16 characters"),
                                (("--host", "0.0.0.0"), "short", "at least 16 characters")):
        proc = _cli(world, *args, "--model", "/no/such/model", token=token)  # refused before the model loads: no model error
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
        assert not proc.stdout


def test_a_token_guards_every_endpoint_but_health(world, guarded):
    with httpx.Client(base_url=guarded.url, timeout=60) as anonymous:
        assert anonymous.get("/health").json()["status"] == "ok"
        body = {"prompts": world.prompts[:1], "completions": world.completions[:1]}
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            for path in ("/score", "/get_reward", "/info", "/nowhere"):
                response = anonymous.post(path, json=body, headers=headers) if path != "/info" else anonymous.get(path, headers=headers)
                _one_line_error(response, 401, "bearer token")
                assert response.headers["www-authenticate"] == "Bearer"
        got = anonymous.post("/score", json=body, headers={"Authorization": f"bearer {TOKEN}"})  # the scheme is case-blind
        np.testing.assert_allclose(got.json()["rewards"], world.rp.score(body["prompts"], body["completions"]).rewards, **TOL)
    assert guarded.client.get("/info").json()["has_baseline"] is False


def test_a_full_queue_answers_503_and_the_rest_are_scored(world, guarded):
    n = 12
    prompts, completions = world.prompts[:20] * 5, world.completions[:20] * 5
    expected = world.rp.score(prompts, completions).rewards
    responses: list[httpx.Response] = [None] * n  # type: ignore[list-item]
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        with httpx.Client(base_url=guarded.url, headers=guarded.headers, timeout=60) as http:
            barrier.wait()
            responses[i] = http.post("/score", json={"prompts": prompts, "completions": completions})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for r in responses if r.status_code == 503]
    assert busy and len(busy) < n
    for r in busy:
        _one_line_error(r, 503, "server busy", "retry later")
        assert r.headers["retry-after"] == "1"
    for r in responses:
        if r.status_code != 503:
            np.testing.assert_allclose(r.json()["rewards"], expected, **TOL)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(world, guarded):
    """Runs last on `guarded`: it stops that server."""
    n = 2000
    prompts = [world.prompts[i % 23] for i in range(n)]
    completions = [f"{world.completions[i % 23]} {i}" for i in range(n)]
    result: dict = {}

    def client() -> None:
        result["response"] = guarded.client.post("/score", json={"prompts": prompts, "completions": completions})

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 30
    while guarded.client.get("/health").json()["pending"] == 0:  # wait until the request is being scored
        assert time.monotonic() < deadline and thread.is_alive(), "the request never reached the batcher"
        time.sleep(0.005)
    guarded.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    response = result["response"]
    assert response.status_code == 200 and len(response.json()["rewards"]) == n
    assert guarded.proc.wait(timeout=30) == 0
    assert "stopped after" in guarded.stderr()
