"""The benchmarks' harness: what every script records about its run, how it times and measures memory, how it prints.

* one machine record (`machine`): CPU, cores, memory, torch/transformers versions, GPU if any, load
  average, threads, git commit; each script picks the fields its recorded JSON has (and their keys);
  `machine_line` is the one-line form some results carry;
* one results header (`results_header`): command line, date, machine;
* timers (`Clock`, `timed`; CUDA drained before each clock read with `sync=True`);
* memory probes: this process's resident peak (`PeakMemory`, `proc_status_mb`, `reset_peak_rss`) measured in a
  fresh child process started by `run_child`, which reads back the one JSON line the child prints;
  numpy/Python allocations traced with tracemalloc (`TracedMemory`); the GPU's peak (`cuda_reset_peak`, `cuda_peak_bytes`);
* console output: `console` (rich, stderr), `log`, `table`;
* command-line plumbing: `ArgumentParser` (argparse with checks run after parsing), `add_threads_option` / `apply_threads`.

The scripts are scripts, not the CLI: they draw with rich directly. This module imports torch only inside the
functions that need it, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]

console = Console(stderr=True)


# ---- console ---------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    """A timestamped line on stderr (rich)."""
    console.log(msg, _stack_offset=2)


def plain_log(msg: str) -> None:
    """A timestamped line on stderr without rich markup: for logs read back as plain text (run_gpu.py on a lent machine)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return t


def print_stdout(renderable: Any, width: int = 140) -> None:
    """Print on stdout (a results table), `width` columns wide where stdout is not a terminal (a file, a pipe)."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=width)
    out.print(renderable)


# ---- command line ----------------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse with checks that run after parsing (`add_check`): a failed check is an argparse error (usage, exit 2),
    so a script's `add_cli_args` keeps its options and their validation together and `main(args)` gets checked args."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._checks: list[Callable[[argparse.Namespace], str | None]] = []

    def add_check(self, check: Callable[[argparse.Namespace], str | None]) -> None:
        """`check(args)` returns an error message, or None when the arguments are fine."""
        self._checks.append(check)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for check in self._checks:
            if message := check(parsed):
                self.error(message)
        return parsed


def add_threads_option(ap, default: int = 0) -> None:
    """--threads: torch threads for a benchmark (0 = torch's default)."""
    ap.add_argument("--threads", type=int, default=default,
                    help=f"torch threads (0 = torch's default{f'; default {default}' if default else ''}); "
                         "1 avoids OpenMP spin-waits when the CPU is shared")


def apply_threads(n: int) -> int:
    """Set torch's thread count when `n` > 0; return the count in effect (recorded with the results)."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# ---- the machine record ----------------------------------------------------------------------------------------


def _cpu_info() -> dict:
    from probekit.cpu_dtype import cpu_info

    return cpu_info()


def _cpus_available() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return None


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=str(ROOT)).stdout.strip() or None
    except OSError:
        return None


def _torch():
    import torch

    return torch


def _gpu_properties() -> dict:
    torch = _torch()
    if not torch.cuda.is_available():
        return {}
    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count,
            "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported()}


# Every fact the benchmarks record about their machine, each measured when asked for (the thread count and the load
# average are those of the moment of the call).
FIELDS: dict[str, Callable[[], Any]] = {
    "cpu": lambda: _cpu_info().get("model") or platform.processor(),
    "cpu_count": os.cpu_count,
    "cpus_available": _cpus_available,
    "bf16_instructions": lambda: sorted(set(_cpu_info().get("flags", [])) & {"avx512_bf16", "amx_bf16", "bf16"}),
    "ram_gb": lambda: round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "arch": platform.machine,
    "processor": lambda: platform.processor() or platform.machine(),
    "platform": platform.platform,
    "python": platform.python_version,
    "torch": lambda: _torch().__version__,
    "torch_threads": lambda: _torch().get_num_threads(),
    "transformers": lambda: __import__("transformers").__version__,
    "cuda_available": lambda: _torch().cuda.is_available(),
    "gpu": lambda: _torch().cuda.get_device_name(0) if _torch().cuda.is_available() else None,
    "load_average": lambda: [round(x, 2) for x in os.getloadavg()],
    "load_average_unrounded": lambda: list(os.getloadavg()),
    "git_commit": _git_commit,
}
# Fields that expand into several keys (none where they do not apply): the GPU's name, memory, SMs, CUDA, bfloat16.
GROUPS: dict[str, Callable[[], dict]] = {"gpu_properties": _gpu_properties}


def machine(*fields: str) -> dict:
    """The machine record, or the named fields of it in that order; "key=field" records a field under another key
    (each script keeps the keys of its recorded JSON: e.g. "load_average_at_start=load_average")."""
    out: dict = {}
    for spec in fields or (*FIELDS, *GROUPS):
        key, _, name = spec.partition("=")
        name = name or key
        if name in GROUPS:
            out.update(GROUPS[name]())
        elif name in FIELDS:
            out[key] = FIELDS[name]()
        else:
            raise KeyError(f"unknown machine field {name!r}; known: {', '.join([*FIELDS, *GROUPS])}")
    return out


def machine_line(shared: bool = True) -> str:
    """The machine in one line: architecture, cores (shared or not), Python."""
    m = machine("arch", "cpu_count", "python")
    return f"{m['arch']}, {m['cpu_count']} CPU cores{' (shared)' if shared else ''}, {m['python']}"


# ---- the results header ----------------------------------------------------------------------------------------


def command_line(exact: bool = True) -> str:
    """The command that ran this script: exactly (the interpreter and every argument, shell-quoted), or as
    "python <script> <args>" (the short form some recorded results use)."""
    if exact:
        return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    return "python " + " ".join(sys.argv)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def results_header(benchmark: str | None = None, *, exact_command: bool = True, cwd: bool = False, day_only: bool = False,
                   machine: dict | str | None = None) -> dict:
    """The keys a results JSON starts with: benchmark (when given), command, cwd (when asked), date (UTC to the second,
    or the local day), machine (when given: a `machine(...)` record or a `machine_line()`)."""
    out: dict = {}
    if benchmark is not None:
        out["benchmark"] = benchmark
    out["command"] = command_line(exact_command)
    if cwd:
        out["cwd"] = os.getcwd()
    out["date"] = time.strftime("%Y-%m-%d") if day_only else utc_now()
    if machine is not None:
        out["machine"] = machine
    return out


# ---- timers ----------------------------------------------------------------------------------------------------


def cuda_sync() -> None:
    """Wait for queued CUDA work (nothing without CUDA), so that a clock read after it counts that work."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Clock:
    """Wall-clock and CPU seconds of a block (`seconds`, `cpu_seconds`); `elapsed` reads the wall clock while it runs.

    With one torch thread, CPU time is the work done, whatever else loads the machine. `collect`: a garbage
    collection before the clock starts; `sync`: CUDA drained before both clock reads.
    """

    def __init__(self, *, sync: bool = False, collect: bool = False):
        self.sync, self.collect = sync, collect

    def start(self) -> Clock:
        if self.collect:
            gc.collect()
        if self.sync:
            cuda_sync()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def stop(self) -> Clock:
        if self.sync:
            cuda_sync()
        self.seconds, self.cpu_seconds = time.perf_counter() - self.t0, time.process_time() - self.c0
        return self

    def __enter__(self) -> Clock:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def timed(fn: Callable[[], Any], *, sync: bool = False, collect: bool = True) -> tuple[Any, float, float]:
    """(fn(), wall seconds, CPU seconds); by default after a garbage collection, so no earlier garbage is collected inside."""
    with Clock(sync=sync, collect=collect) as clock:
        value = fn()
    return value, clock.seconds, clock.cpu_seconds


# ---- memory ----------------------------------------------------------------------------------------------------


def proc_status_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak of this process image) from /proc/self/status, in MB (nan where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def ru_maxrss_mb() -> float:
    """getrusage's peak RSS (Linux: KiB). Caveat: Linux carries it over fork and exec, so in a
    child it starts at the parent's RSS at spawn time; `proc_status_mb("VmHWM")` does not."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakMemory:
    """This process's resident memory from now on: `before_mb` (VmRSS at the start), `peak_mb()` (VmHWM).

    `reset`: first reset the peak to the current RSS (`reset_peak_rss`; `was_reset` says whether it could), so that the
    peak is the work's from here on and not, say, the model loading's. Run the work alone in a fresh process
    (`run_child`): a long-lived process's peak holds everything it ever did.
    """

    def __init__(self, reset: bool = False):
        self.was_reset = reset_peak_rss() if reset else False
        self.before_mb = proc_status_mb("VmRSS")

    def peak_mb(self) -> float:
        return proc_status_mb("VmHWM")


def run_child(script: Path | str, args: list[str], label: str) -> dict:
    """Run `script` with `args` in a fresh Python process (cwd: the repository) and return the last JSON line it printed."""
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), *args], capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"{label} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


class TracedMemory:
    """Python and numpy allocations inside a block, traced by tracemalloc: `current_mb` still held at the end, `peak_mb`,
    and `top(k)`, the k source lines holding most at the end."""

    def __init__(self, frames: int = 8):
        self.frames = frames

    def __enter__(self) -> TracedMemory:
        tracemalloc.start(self.frames)
        return self

    def __exit__(self, *exc) -> None:
        current, peak = tracemalloc.get_traced_memory()
        self.current_mb, self.peak_mb = current / 2**20, peak / 2**20
        self.snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()

    def top(self, k: int = 5) -> list[tuple[float, str]]:
        return [(stat.size / 2**20, str(stat.traceback[0])) for stat in self.snapshot.statistics("lineno")[:k]]


def cuda_reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_bytes() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
