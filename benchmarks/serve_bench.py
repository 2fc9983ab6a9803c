"""`probekit serve` under load, against offline `RewardProbe.score` on the same texts, side by side in one run.

1. A probe on the bundled model (SmolLM2-135M; by default layer 8 of 30 and raw
   prompts, so that the 10,000-request soak fits in minutes on a shared 2-core
   CPU; `--layer 15 --template chat` for the middle layer and the chat template):
   synthetic problems (`probekit.data.synth`), extracted and fitted here (a few
   epochs: the probe's quality does not matter, its forward does).
2. Offline: `rp.score` on N texts (rendered prompt + completion + EOS, as OpenRLHF
   sends them; EOS alone for raw prompts) in this process at the server's thread count, before and after
   the server runs (the machine's other load moves both).
3. The server (`python -m probekit_cli.main --threads T serve --port 0`, a
   subprocess) at 1, 8 and 32 concurrent clients (threads with keep-alive httpx
   clients), each request one OpenRLHF /get_reward query as OpenRLHF's trainer
   sends them; bounded by a request count and a time limit per level:
   requests/s, texts/s, p50/p99 latency, and texts/s against offline.
4. A soak: at least 10,000 small requests, the server's RSS (VmRSS) sampled at
   the start, every 1,000 requests and at the end.

Results: benchmarks/results/serve.json (command, date, machine, commit, every number) and a table on stdout.

    .venv/bin/python benchmarks/serve_bench.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (ArgumentParser, Clock, add_threads_option, apply_threads, log, machine,  # noqa: E402
                                print_stdout, results_header, table)
from probekit.io import write_json  # noqa: E402

MACHINE_FIELDS = ("cpu", "cpu_count", "cpus_available", "ram_gb", "torch", "torch_threads", "transformers", "python", "platform",
                  "load_average_at_start=load_average", "git_commit")
TARGET = 0.8  # issue 20: at 32 clients, at least 80% of offline throughput


def add_cli_args(ap: ArgumentParser) -> None:
    ap.add_argument("--model", default="smollm2-135m", help="frozen model (default: the bundled smollm2-135m)")
    ap.add_argument("--layer", type=int, default=8, help="the probe's layer: the forward stops after it (default 8 of 30)")
    ap.add_argument("--template", default="raw", choices=("raw", "chat"), help="prompt rendering of the probe's store")
    ap.add_argument("--n-problems", type=int, default=48, help="synthetic problems for the probe's store (2 solutions each)")
    ap.add_argument("--texts", type=int, default=256, help="texts of the offline run and of each concurrency level")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels (comma list)")
    ap.add_argument("--level-seconds", type=float, default=120, help="time limit of one concurrency level")
    ap.add_argument("--soak", type=int, default=10_000, help="requests of the soak (at least 10,000 for the record)")
    ap.add_argument("--soak-clients", type=int, default=32)
    ap.add_argument("--soak-seconds", type=float, default=420, help="time limit of the soak")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    ap.add_argument("--work", type=Path, default=None, help="folder for the store and probe (default: a temporary one)")
    add_threads_option(ap, default=1)
    ap.add_check(lambda a: "--soak must be >= 1" if a.soak < 1 else None)


# ---- the probe and the texts -----------------------------------------------------------------------------------


def build_probe(work: Path, args: argparse.Namespace) -> tuple[Path, list]:
    """A probe fitted on a small synthetic store of `args.model` at `args.layer`; (checkpoint folder, trajectories)."""
    from probekit.config import FitConfig
    from probekit.data.schema import write_trajectories
    from probekit.data.synth import synth_problems
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    trajs = synth_problems(args.n_problems, 2, seed=0)
    write_trajectories(work / "data.jsonl", trajs)
    with Clock() as clock:
        extract(ExtractOptions(trajectories=work / "data.jsonl", out=work / "store", model=args.model, layers=str(args.layer),
                               template=args.template, overwrite=True))
    log(f"extract: {len(trajs)} trajectories in {clock.seconds:.1f}s")
    ckpt = fit_probe(Store(work / "store"), work / "ckpt", FitConfig().vary(epochs=5, n_boot=50), overwrite=True)
    return Path(ckpt.path), trajs


def openrlhf_texts(rp, trajs: list, n: int) -> tuple[list[str], list[str]]:
    """n (rendered prompt, completion + EOS) pairs, cycling through the trajectories with a counter so no two are equal."""
    prompts, completions = [], []
    for i in range(n):
        t = trajs[i % len(trajs)]
        chat = rp.spec.template == "chat"
        prompts.append(rp.tokenizer.apply_chat_template([{"role": "user", "content": t.prompt}], add_generation_prompt=True,
                                                        tokenize=False) if chat else t.prompt + "\n")
        completions.append(f"{t.completion} ({i})" + rp.tokenizer.eos_token)
    return prompts, completions


def offline(rp, prompts: list[str], completions: list[str], batch_size: int | None = None) -> dict:
    """Offline scoring of the texts in one call (`batch_size`: in chunks of that many texts, as a server batch holds)."""
    with Clock() as clock:
        rp.score(prompts, completions, rendered=True, **({"batch_size": batch_size} if batch_size else {}))
    return {"texts": len(prompts), "seconds": round(clock.seconds, 3), "texts_per_second": round(len(prompts) / clock.seconds, 2)}


# ---- the server and the load -----------------------------------------------------------------------------------


class ServerProcess:
    """The server in a subprocess on a free loopback port; its URL read from stdout, its RSS from /proc."""

    def __init__(self, ckpt: Path, model: str, threads: int, max_wait_ms: float, stderr: Path):
        cmd = [sys.executable, "-m", "probekit_cli.main", "--threads", str(threads), "serve", "--ckpt", str(ckpt), "--model", model,
               "--port", "0", "--max-wait-ms", str(max_wait_ms)]
        self.command = " ".join(cmd[1:])
        with open(stderr, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=str(ROOT))
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {stderr.read_text()[-2000:]}")
        self.url = line.strip()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def run_load(url: str, bodies: list[dict], clients: int, max_requests: int, max_seconds: float,
             every: int = 0, on_every=None) -> dict:
    """`clients` threads send the bodies (cycling) until `max_requests` are answered or `max_seconds` pass; `on_every(n)` is
    called after each `every` answers (the soak samples RSS there)."""
    import httpx

    latencies: list[float] = []
    lock, counter, errors = threading.Lock(), [0], [0]
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    if counter[0] >= max_requests:
                        return
                    i = counter[0]
                    counter[0] += 1
                t0 = time.perf_counter()
                response = http.post("/get_reward", content=json.dumps(bodies[i % len(bodies)]), headers={"Content-Type": "application/json"})
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    errors[0] += response.status_code != 200
                    done = len(latencies)
                if every and on_every is not None and done % every == 0:
                    on_every(done)

    with Clock() as clock:
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lat = np.asarray(latencies) * 1000
    n = len(latencies)
    return {"clients": clients, "requests": n, "errors": errors[0], "seconds": round(clock.seconds, 3),
            "requests_per_second": round(n / clock.seconds, 2), "texts_per_second": round(n * len(bodies[0]["query"]) / clock.seconds, 2),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1), "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
            "stopped_by": "count" if n >= max_requests else "time"}


def soak(server: ServerProcess, rp, trajs: list, args) -> dict:
    """Many small requests (one short text each); the server's RSS at the start, every 1,000 requests and at the end."""
    short = [{"query": [p + c], "prompts": [p]} for p, c in zip(*openrlhf_texts(rp, [_short(t, i) for i, t in enumerate(trajs)], 512))]
    samples = [(0, round(server.rss_mb(), 1))]
    load = run_load(server.url, short, args.soak_clients, args.soak, args.soak_seconds, every=1000,
                    on_every=lambda n: samples.append((n, round(server.rss_mb(), 1))))
    samples.append((load["requests"], round(server.rss_mb(), 1)))
    rss = [mb for _, mb in samples]
    mid = samples[len(samples) // 2]
    return {**load, "rss_mb_samples": samples, "rss_mb_start": rss[0], "rss_mb_middle": mid[1], "rss_mb_end": rss[-1],
            "rss_mb_growth_start_to_end": round(rss[-1] - rss[0], 1), "rss_mb_growth_middle_to_end": round(rss[-1] - mid[1], 1)}


def _short(t, i: int):
    """A tiny question and answer in place of a trajectory's: a small request (about 20 tokens with the template)."""
    import dataclasses

    return dataclasses.replace(t, prompt=f"{i} + 2?", completion=f"A: {i + 2}")


# ---- main ------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    from probekit.reward import RewardProbe

    threads = apply_threads(args.threads)
    header = results_header("serve", machine=machine(*MACHINE_FIELDS))
    wall = Clock().start()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ckpt, trajs = build_probe(work, args)
        rp = RewardProbe.load(ckpt, device="auto")  # where the server runs
        prompts, completions = openrlhf_texts(rp, trajs, args.texts)
        rp.score(prompts[:16], completions[:16], rendered=True)  # warm-up
        offline_before = offline(rp, prompts, completions)
        log(f"offline: {offline_before['texts_per_second']} texts/s")
        bodies = [{"query": [p + c], "prompts": [p], "labels": [None]} for p, c in zip(prompts, completions)]
        server = ServerProcess(ckpt, args.model, threads, args.max_wait_ms, work / "server-stderr.txt")
        try:
            run_load(server.url, bodies[:16], 4, 16, 60)  # warm-up
            levels = []
            for clients in (int(c) for c in args.clients.split(",")):
                levels.append(run_load(server.url, bodies, clients, args.texts, args.level_seconds))
                log(f"{clients} clients: {levels[-1]['requests_per_second']} requests/s, p50 {levels[-1]['latency_ms_p50']} ms")
            soaked = soak(server, rp, trajs, args)
            log(f"soak: {soaked['requests']} requests, RSS {soaked['rss_mb_start']} -> {soaked['rss_mb_end']} MB")
        finally:
            exit_status = server.stop()
        batch_lines = [line for line in (work / "server-stderr.txt").read_text().splitlines() if line.startswith("batch ")]
        offline_after = offline(rp, prompts, completions)
        # A server batch holds at most the in-flight requests (one text each): offline in chunks of that many texts
        # separates what batch composition costs from what serving costs.
        top_clients = max(int(c) for c in args.clients.split(","))
        offline_top = offline(rp, prompts, completions, batch_size=top_clients)
    reference = (offline_before["texts_per_second"] + offline_after["texts_per_second"]) / 2
    for level in levels:
        level["fraction_of_offline"] = round(level["texts_per_second"] / reference, 3)
    top = max(levels, key=lambda lv: lv["clients"])
    top["fraction_of_offline_in_same_chunks"] = round(top["texts_per_second"] / offline_top["texts_per_second"], 3)
    result = {
        **header,
        "what": "probekit serve (subprocess, loopback, POST /get_reward with one OpenRLHF query per request) against offline "
                "RewardProbe.score on the same texts in this process at the same torch thread count",
        "model": args.model, "checkpoint_layers": list(rp.layers), "template": rp.spec.template, "torch_threads": threads,
        "server_command": server.command, "server_exit_status": exit_status, "server_batches_logged": len(batch_lines),
        "texts": {"n": len(prompts), "mean_tokens": round(float(np.mean([len(e.input_ids) for e in rp.encode(prompts, completions, rendered=True)])), 1)},
        "offline": {"before": offline_before, "after": offline_after, "reference_texts_per_second": round(reference, 2),
                    "in_chunks_of_top_clients": offline_top},
        "levels": levels, "soak": soaked,
        "target": {"what": f"at {top['clients']} clients, >= {TARGET:.0%} of offline texts/s", "fraction": top["fraction_of_offline"],
                   "met": top["fraction_of_offline"] >= TARGET},
        "wall_seconds": round(wall.elapsed, 1),
    }
    write_json(args.out, result)
    rows = [[lv["clients"], lv["requests"], lv["requests_per_second"], lv["texts_per_second"], lv["latency_ms_p50"], lv["latency_ms_p99"],
             lv["fraction_of_offline"]] for lv in levels]
    print_stdout(table(f"probekit serve vs offline {reference:.1f} texts/s ({threads} thread(s))",
                       ["clients", "requests", "req/s", "texts/s", "p50 ms", "p99 ms", "x offline"], rows))
    log(f"wrote {args.out} ({result['wall_seconds']}s)")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
