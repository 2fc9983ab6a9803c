"""`probekit serve` under load, against offline `RewardProbe.score` on the same texts, side by side in one run.

1. A probe on the bundled model (SmolLM2-135M; by default layer 8 of 30 and raw
   prompts, so that the 10,000-request soak fits in minutes on a shared 2-core
   CPU; `--layer 15 --template chat` for the middle layer and the chat template):
   synthetic problems (`probekit.data.synth`), extracted and fitted here (a few
   epochs: the probe's quality does not matter, its forward does).
2. Three workloads of N texts (rendered prompt + completion + EOS, as OpenRLHF
   sends them; EOS alone for raw prompts), each scored offline with
   `rp.score` in one call in this process at the server's thread count, before
   and after the server runs (the machine's other load moves both):
   - `distinct`: every text its own prompt, one text per request (the target's
     workload: offline gains nothing the server cannot);
   - `groups`: one prompt with `--group` completions per request, as a GRPO
     trainer's rollouts of one prompt arrive;
   - `cycled`: N texts cycling over the store's 48 prompts, one per request.
     Offline scoring groups a whole file's texts by prompt and runs each prompt
     once; a server can share a prompt only within one batch. Also scored
     offline in separate calls of the server's batch size in request order,
     which shows that gap is batch composition.
3. The server (`python -m probekit_cli.main --threads T serve --port 0`, a
   subprocess) at 1, 8 and 32 concurrent clients per workload (threads with
   keep-alive httpx clients), each request one OpenRLHF /get_reward call as
   OpenRLHF's trainer sends them; bounded by a request count and a time limit
   per level: requests/s, texts/s, p50/p99 latency, texts/s against offline.
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
from dataclasses import dataclass
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
    ap.add_argument("--texts", type=int, default=256, help="texts of each workload's offline run and concurrency level")
    ap.add_argument("--workloads", default="distinct,groups,cycled", help="workloads to run (comma list; see the docstring)")
    ap.add_argument("--group", type=int, default=4, help="completions per request in the `groups` workload")
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
    ap.add_check(lambda a: f"--workloads: unknown {sorted(set(a.workloads.split(',')) - set(WORKLOADS))}"
                 if not set(a.workloads.split(",")) <= set(WORKLOADS) else None)


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


WORKLOADS = ("distinct", "groups", "cycled")


@dataclass(frozen=True)
class Workload:
    """A workload's texts and the request bodies that carry them (each body's texts in order)."""

    name: str
    prompts: list[str]
    completions: list[str]
    bodies: list[dict]

    @property
    def per_request(self) -> int:
        return len(self.bodies[0]["query"])


def render(rp, prompt: str) -> str:
    """The prompt as OpenRLHF sends it: the chat template's output for a chat probe, the raw prompt and a newline else."""
    if rp.spec.template == "chat":
        return rp.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return prompt + "\n"


def workload(name: str, rp, trajs: list, n: int, group: int) -> Workload:
    """n texts of workload `name` (see the module docstring); a counter makes every text, and every prompt but in
    `cycled`, unique."""
    eos = rp.tokenizer.eos_token
    per = group if name == "groups" else 1
    prompts, completions = [], []
    for i in range(n):
        t = trajs[(i // per) % len(trajs)] if name == "groups" else trajs[i % len(trajs)]
        prompt = t.prompt if name == "cycled" else f"({i // per}) {t.prompt}"
        prompts.append(render(rp, prompt))
        completions.append(f"{t.completion} ({i})" + eos)
    bodies = [{"query": [p + c for p, c in zip(prompts[i:i + per], completions[i:i + per])], "prompts": prompts[i:i + per],
               "labels": [None] * per} for i in range(0, n - n % per, per)]
    return Workload(name, prompts, completions, bodies)


def offline(rp, prompts: list[str], completions: list[str], calls_of: int | None = None) -> dict:
    """Offline scoring of the texts in one call, as `probekit score` does a file (`calls_of`: in separate calls of that
    many texts in order, as the server's batches see them)."""
    size = calls_of or len(prompts)
    with Clock() as clock:
        for i in range(0, len(prompts), size):
            rp.score(prompts[i:i + size], completions[i:i + size], rendered=True)
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
    texts = workload("distinct", rp, [_short(t, i) for i, t in enumerate(trajs)], 512, 1)
    short = [{"query": [p + c], "prompts": [p]} for p, c in zip(texts.prompts, texts.completions)]
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


def run_workload(server: ServerProcess, rp, w: Workload, args: argparse.Namespace) -> dict:
    """The workload through the server at each concurrency level, with offline before and after it."""
    before = offline(rp, w.prompts, w.completions)
    levels = []
    for clients in (int(c) for c in args.clients.split(",")):
        level = run_load(server.url, w.bodies, clients, len(w.bodies), args.level_seconds)
        levels.append(level)
        log(f"{w.name}, {clients} clients: {level['texts_per_second']} texts/s, p50 {level['latency_ms_p50']} ms")
    after = offline(rp, w.prompts, w.completions)
    reference = (before["texts_per_second"] + after["texts_per_second"]) / 2
    for level in levels:
        level["fraction_of_offline"] = round(level["texts_per_second"] / reference, 3)
    out = {"texts": len(w.prompts), "texts_per_request": w.per_request,
           "mean_tokens": round(float(np.mean([len(e.input_ids) for e in rp.encode(w.prompts, w.completions, rendered=True)])), 1),
           "offline": {"before": before, "after": after, "reference_texts_per_second": round(reference, 2)}, "levels": levels}
    if w.name == "cycled":
        # A batch at C closed-loop clients holds about C/2 requests (two cohorts): offline in calls of that size.
        size = max(1, max(int(c) for c in args.clients.split(",")) // 2)
        out["offline"]["in_calls_of_a_server_batch"] = {"texts_per_call": size, **offline(rp, w.prompts, w.completions, calls_of=size)}
    return out


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
        loads = [workload(name, rp, trajs, args.texts, args.group) for name in args.workloads.split(",")]
        rp.score(loads[0].prompts[:16], loads[0].completions[:16], rendered=True)  # warm-up
        server = ServerProcess(ckpt, args.model, threads, args.max_wait_ms, work / "server-stderr.txt")
        try:
            run_load(server.url, loads[0].bodies[:16], 4, 16, 60)  # warm-up
            results = {w.name: run_workload(server, rp, w, args) for w in loads}
            soaked = soak(server, rp, trajs, args)
            log(f"soak: {soaked['requests']} requests, RSS {soaked['rss_mb_start']} -> {soaked['rss_mb_end']} MB")
        finally:
            exit_status = server.stop()
        batch_lines = [line for line in (work / "server-stderr.txt").read_text().splitlines() if line.startswith("batch ")]
    judged = results.get("distinct") or next(iter(results.values()))
    top = max(judged["levels"], key=lambda lv: lv["clients"])
    result = {
        **header,
        "what": "probekit serve (subprocess, loopback, POST /get_reward as OpenRLHF's trainer sends it) against offline "
                "RewardProbe.score on the same texts in one call in this process at the same torch thread count",
        "model": args.model, "checkpoint_layers": list(rp.layers), "template": rp.spec.template, "torch_threads": threads,
        "server_command": server.command, "server_exit_status": exit_status, "server_batches_logged": len(batch_lines),
        "workloads": results, "soak": soaked,
        "target": {"what": f"at {top['clients']} clients, >= {TARGET:.0%} of offline texts/s on the "
                           f"{'distinct' if 'distinct' in results else next(iter(results))} workload",
                   "fraction": top["fraction_of_offline"], "met": top["fraction_of_offline"] >= TARGET},
        "wall_seconds": round(wall.elapsed, 1),
    }
    write_json(args.out, result)
    rows = [[name, lv["clients"], lv["requests"], lv["texts_per_second"], lv["latency_ms_p50"], lv["latency_ms_p99"],
             r["offline"]["reference_texts_per_second"], lv["fraction_of_offline"]] for name, r in results.items() for lv in r["levels"]]
    print_stdout(table(f"probekit serve vs offline ({threads} thread(s))",
                       ["workload", "clients", "requests", "texts/s", "p50 ms", "p99 ms", "offline texts/s", "x offline"], rows))
    log(f"wrote {args.out} ({result['wall_seconds']}s)")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
