"""Regression tests for hostile inputs and environments: every one failed on commit 4b231c4 unless noted.

Each test names the defect it pins down. CLI tests go through the real entry
point (`python -m probekit`, i.e. `probekit_cli.main.main`) and check the exit status,
a single stderr line naming the file, and the absence of a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from probekit.data.schema import read_trajectories, write_trajectories
from probekit.errors import ProbekitError
from probekit.extract import run as run_mod
from probekit.extract.run import extract, lock_name
from probekit.models import load_model
from probekit.outputs import MARKER
from probekit.store import Store, read_shard_attrs, shard_name
from tests.helpers import ProgressRecorder, assert_same_store, extract_options, toy_trajectories
from tests.store_factory import make_store

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"id": "t0", "group": "g0", "prompt": "What is 2 + 2?", "completion": "2 + 2 = 4. A: 4", "label": 1}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture()
def traj_file(tmp_path):
    path = tmp_path / "in" / "trajectories.jsonl"
    path.parent.mkdir()
    write_trajectories(path, toy_trajectories())
    return path


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probekit", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _lines(path: Path, lines: list) -> Path:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return path


# ---- 1. extract --out holding the inputs ---------------------------------------------------


def test_extract_into_the_data_folder_is_refused_and_keeps_hand_made_pairs(tiny, traj_file):
    data = traj_file.parent
    hand_made = _lines(data / "pairs.jsonl", [{"chosen": "t1", "rejected": "t0"}]).read_bytes()
    with pytest.raises(ProbekitError, match="holds the input"):
        extract(extract_options(traj_file, data), loaded=tiny)
    assert (data / "pairs.jsonl").read_bytes() == hand_made
    assert sorted(p.name for p in data.iterdir()) == ["pairs.jsonl", "trajectories.jsonl"]


def test_extract_never_replaces_a_user_file_with_an_output_name(tiny, traj_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pairs.jsonl").write_text("mine\n")
    for overwrite in (False, True):
        with pytest.raises(ProbekitError, match="pairs.jsonl"):
            extract(extract_options(traj_file, out, overwrite=overwrite), loaded=tiny)
    assert (out / "pairs.jsonl").read_text() == "mine\n"


def test_overwrite_of_another_store_deletes_only_probekit_shards(tiny, traj_file, tmp_path):
    out = tmp_path / "st"
    extract(extract_options(traj_file, out), loaded=tiny)
    assert json.loads((out / MARKER).read_text())["command"] == "extract"
    (out / "shard-00099.h5").write_text("a file of the user's that looks like a shard")
    with pytest.raises(ProbekitError, match="other settings"):  # refused without --overwrite
        extract(extract_options(traj_file, out, layers="3"), loaded=tiny)
    assert (out / "shard-00099.h5").exists()
    res = extract(extract_options(traj_file, out, layers="3", overwrite=True), loaded=tiny)
    assert res.complete and Store(out).layers == [3]
    assert (out / "shard-00099.h5").read_text() == "a file of the user's that looks like a shard"


# ---- 2. non-finite states -------------------------------------------------------------------


@pytest.fixture()
def poisoned_store(tmp_path):
    rng = np.random.default_rng(0)
    states = [rng.standard_normal((5, 8)).astype(np.float32) for _ in range(12)]
    states[9][2, 3] = np.nan  # trajectory t9, the second shard (shard_size 8): global row 9 * 5 + 2
    return make_store(tmp_path / "poisoned", states, [f"g{i // 2}" for i in range(12)], [i % 2 for i in range(12)]), 9 * 5 + 2


@pytest.mark.parametrize(
    "read",
    [
        lambda st: st.read_rows(2, [0, 47, 3]),
        lambda st: list(st.iter_shards(2)),
        lambda st: list(st.iter_shards(2, as_float32=False)),
        lambda st: st.load_layer(2),
        lambda st: st.trajectory_states(9, 2),
        lambda st: st.shard_states(1, 2),
        lambda st: st.shard_states(1, 2, as_float32=False),
    ],
)
def test_every_state_reader_refuses_non_finite_values(poisoned_store, read):
    path, row = poisoned_store
    with pytest.raises(ProbekitError) as err:
        read(Store(path))
    msg = str(err.value)
    assert shard_name(1) in msg and "layer 2" in msg and f"row {row}" in msg and "'t9'" in msg


def test_infinity_is_refused_and_finite_shards_still_read(tmp_path):
    states = [np.full((3, 4), 60000.0, np.float32) for _ in range(4)]  # large but finite
    states[3][0, 0] = -np.inf
    store = Store(make_store(tmp_path / "inf", states, ["g"] * 4, [1, 0, 1, 0], shard_size=2))
    assert store.shard_states(0, 2).shape == (6, 4)
    with pytest.raises(ProbekitError, match="row 9"):
        store.shard_states(1, 2)


def test_shard_attrs_are_read_through_the_store_module(tiny, traj_file, tmp_path):
    extract(extract_options(traj_file, tmp_path / "st"), loaded=tiny)
    attrs = read_shard_attrs(tmp_path / "st" / shard_name(0))
    assert attrs["complete"] and attrs["cache_key"] == Store(tmp_path / "st").cache_key and int(attrs["shard_index"]) == 0
    with pytest.raises(ProbekitError, match="not a readable shard"):
        read_shard_attrs(tmp_path / "st" / "pairs.jsonl")


# ---- 3. concurrent extractions into one --out -------------------------------------------------


def test_shard_held_by_another_process_is_left_alone(tiny, traj_file, tmp_path):
    extract(extract_options(traj_file, tmp_path / "ref"), loaded=tiny)
    out = tmp_path / "st"
    extract(extract_options(traj_file, out, shard="0/3"), loaded=tiny)  # creates the store (shard 0)
    live_tmp = out / f".{shard_name(1)}.live.h5.tmp"  # another writer's file in progress
    live_tmp.write_bytes(b"being written")
    with FileLock(out / lock_name(1)):
        res = extract(extract_options(traj_file, out), loaded=tiny)
        assert res.shards_busy == [1] and res.shards_done == [2] and not res.complete
        assert live_tmp.read_bytes() == b"being written"  # not deleted under the other writer's feet
    live_tmp.unlink()
    res = extract(extract_options(traj_file, out), loaded=tiny)
    assert res.shards_done == [1] and res.complete
    assert_same_store(tmp_path / "ref", out)


def test_two_processes_writing_one_store_equal_one_process(tiny, tiny_model_dir, traj_file, tmp_path):
    extract(extract_options(traj_file, tmp_path / "one"), loaded=tiny)
    cmd = ["extract", str(traj_file), "--out", str(tmp_path / "two"), "--model", str(tiny_model_dir), "--layers", "1,2",
           "--shard-size", "2", "--dtype", "float32", "--no-progress"]
    procs = [subprocess.Popen([sys.executable, "-m", "probekit", *cmd], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "Traceback" not in err, err
    extract(extract_options(traj_file, tmp_path / "one2", shard_size=2), loaded=tiny)
    assert_same_store(tmp_path / "one2", tmp_path / "two", atol=2e-5)
    assert Store(tmp_path / "two").manifest["status"] == "complete"


# ---- 4. NUL characters --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["id", "group", "answer"])
def test_nul_in_stored_string_fields_is_refused_at_read_time(tmp_path, field):
    path = _lines(tmp_path / "t.jsonl", [GOOD, {**GOOD, "id": "t1", field: "a\u0000b"}])
    with pytest.raises(ProbekitError, match=rf"t\.jsonl:2: field '{field}' contains a NUL character"):
        read_trajectories(path)


# ---- 5. OS errors: one line, exit 2 ------------------------------------------------------


def test_a_folder_given_as_the_input_file(tmp_path):
    folder = tmp_path / "somedir"
    folder.mkdir()
    _assert_one_line_error(_cli("data", "check", str(folder)), "somedir", "is a folder")
    _assert_one_line_error(_cli("extract", str(folder), "--out", str(tmp_path / "x"), "--model", "nonexistent"), "somedir", "is a folder")


def test_out_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep")
    _assert_one_line_error(_cli("data", "synth", "--out", str(target), "--n-problems", "2"), "afile", "is a file")
    assert target.read_text() == "keep"


def test_unwritable_out_fails_before_any_work(tmp_path):
    """/proc refuses new entries even to root, so this runs as root too."""
    _assert_one_line_error(_cli("data", "synth", "--out", "/proc/probekit-test-out", "--n-problems", "2"), "/proc/probekit-test-out", "cannot write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder; covered by the /proc test")
def test_read_only_out_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    _assert_one_line_error(_cli("data", "synth", "--out", str(ro / "sub"), "--n-problems", "2"), "ro")


def test_non_utf8_line_names_the_line_and_is_skippable(tmp_path):
    path = _lines(tmp_path / "t.jsonl", [GOOD, b'{"id": "t1", "group": "g", "prompt": "\xff\xfe", "completion": "x"}\n', {**GOOD, "id": "t2"}])
    _assert_one_line_error(_cli("data", "check", str(path)), "t.jsonl:2: not UTF-8")
    proc = _cli("data", "check", str(path), "--skip-invalid", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped"] == 1 and json.loads(proc.stdout)["trajectories"] == 2


def test_unexpected_os_error_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    import probekit.data.synth
    from probekit_cli.main import main

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied", "/some/where/file.jsonl")

    monkeypatch.setattr(probekit.data.synth, "synth_problems", denied)
    monkeypatch.setattr(sys, "argv", ["probekit", "data", "synth", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: /some/where/file.jsonl: Permission denied"]


# ---- 6. Ctrl-C during a shard write --------------------------------------------------------


def _sigint_inside_a_finalizer() -> None:
    """Deliver SIGINT while Python runs a weakref callback, where it cannot propagate (as inside h5py/torch)."""

    def callback(_ref):
        signal.raise_signal(signal.SIGINT)  # to this thread: os.kill may land on another thread, which a loaded machine runs late
        for _ in range(10_000):  # the handler runs at the next check of the eval loop, still inside the callback
            pass

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # the callback runs now
    assert ref() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt, on purpose
@pytest.mark.parametrize("overlap", [False, True])
def test_ctrl_c_swallowed_by_a_finalizer_still_stops_extraction(tiny, traj_file, tmp_path, monkeypatch, overlap):
    """With --overlap the shard is written on the writer thread while the next shard's forward runs, so a shard whose
    forward ended before the interrupt reached the main thread may be written too: whole, never half."""
    extract(extract_options(traj_file, tmp_path / "ref"), loaded=tiny)
    real_write = run_mod.write_shard
    calls = {"n": 0}

    def write_then_interrupt(*a, **kw):
        calls["n"] += 1
        real_write(*a, **kw)
        if calls["n"] == 2:
            _sigint_inside_a_finalizer()

    monkeypatch.setattr(run_mod, "write_shard", write_then_interrupt)
    cut = tmp_path / "cut"
    # As in an interactive CLI run: Python's own SIGINT handler. A suite started in the background by a
    # non-interactive shell (`make test &`, CI runners) inherits SIGINT ignored, so Python never installs its
    # handler, and extract rightly leaves an ignored or foreign handler alone (checked: no test changes it).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            extract(extract_options(traj_file, cut, overlap=overlap), loaded=tiny)
    finally:
        restored = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
    written = sorted(p.name for p in cut.glob("shard-*.h5"))
    assert written == [shard_name(0), shard_name(1)] or (overlap and written == [shard_name(s) for s in range(3)])
    assert not list(cut.glob("*.tmp")) and not list(cut.glob(".*.tmp"))
    assert restored is signal.default_int_handler  # the guard put it back
    monkeypatch.setattr(run_mod, "write_shard", real_write)
    resumed = extract(extract_options(traj_file, cut), loaded=tiny)
    assert resumed.shards_skipped == list(range(len(written))) and resumed.shards_done == list(range(len(written), 3)) and resumed.complete
    assert_same_store(tmp_path / "ref", cut)


def test_cli_ctrl_c_is_exit_130_and_one_line(tiny_model_dir, traj_file, tmp_path):
    script = (
        "import sys\n"
        "from probekit.extract import run\n"
        "real = run.build_shard\n"
        "calls = []\n"
        "def build(*a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        raise KeyboardInterrupt\n"
        "    return real(*a, **k)\n"
        "run.build_shard = build\n"
        "from probekit_cli.main import main\n"
        f"sys.argv = ['probekit', 'extract', {str(traj_file)!r}, '--out', {str(tmp_path / 'o')!r}, '--model', {str(tiny_model_dir)!r},"
        " '--shard-size', '4', '--no-progress']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == "interrupted"
    assert (tmp_path / "o" / shard_name(0)).exists() and not list((tmp_path / "o").glob(".*.tmp"))


# ---- 7. --skip-invalid skips malformed lines -----------------------------------------------


def test_skip_invalid_skips_and_counts_malformed_and_non_utf8_lines(tmp_path):
    path = _lines(tmp_path / "t.jsonl", [GOOD, b'{"id": "t1", "group": \n', b"\xc3\x28 not utf-8\n", b"[1, 2]\n", {**GOOD, "id": "t2"}])
    with pytest.raises(ProbekitError, match=r"t\.jsonl:2: malformed JSON"):
        read_trajectories(path)
    trajectories, skipped = read_trajectories(path, skip_invalid=True)
    assert [t.id for t in trajectories] == ["t0", "t2"] and skipped == 3


# ---- 8. umask (verification: the atomic writer applied the umask before 4b231c4) ------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_follow_the_umask(tiny, traj_file, tmp_path, umask, mode):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401  (registers the commands)
    from probekit_cli.app import app

    old = os.umask(umask)
    try:
        extract(extract_options(traj_file, tmp_path / "st"), loaded=tiny)
        result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "data"), "--n-problems", "3"])
        assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "st").iterdir() if not p.name.endswith(".lock")] + list((tmp_path / "data").iterdir())
    assert {p.name for p in files} >= {"manifest.json", "pairs.jsonl", shard_name(0), "trajectories.jsonl", MARKER}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}
    assert stat.S_IMODE((tmp_path / "st").stat().st_mode) == 0o777 & ~umask


# ---- 9. booleans where integers are required ----------------------------------------------


def test_boolean_error_char_is_refused_but_boolean_labels_stay(tmp_path):
    with pytest.raises(ProbekitError, match=r"t\.jsonl:1: field 'error_char'"):
        read_trajectories(_lines(tmp_path / "t.jsonl", [{**GOOD, "error_char": True}]))
    trajectories, _ = read_trajectories(_lines(tmp_path / "ok.jsonl", [{**GOOD, "label": True}]))
    assert trajectories[0].label == 1


# ---- 10. data commands claim --out ----------------------------------------------------------


def _data_cli(*args: str):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401
    from probekit_cli.app import app

    return CliRunner().invoke(app, ["data", *args])


def test_data_writer_refuses_a_folder_of_user_files_unless_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    result = _data_cli("synth", "--out", str(out), "--n-problems", "2")
    assert isinstance(result.exception, ProbekitError) and "notes.txt" in str(result.exception)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert _data_cli("synth", "--out", str(out), "--n-problems", "2", "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "keep" and (out / "trajectories.jsonl").exists()
    fresh = tmp_path / "fresh"
    assert _data_cli("synth", "--out", str(fresh), "--n-problems", "2").exit_code == 0
    assert _data_cli("synth", "--out", str(fresh), "--n-problems", "3").exit_code == 0  # its own output: replaced freely


def test_data_writer_never_replaces_its_input_or_a_user_file_of_the_same_name(tmp_path):
    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    source = _lines(gsm / "test.jsonl", [{"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}])
    result = _data_cli("gsm8k-gold", "--input", str(source), "--out", str(gsm), "--overwrite")
    assert isinstance(result.exception, ProbekitError) and "holds the input" in str(result.exception)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "pairs.jsonl").write_text("mine\n")
    result = _data_cli("gsm8k-gold", "--input", str(source), "--out", str(tmp_path / "o"), "--overwrite")
    assert isinstance(result.exception, ProbekitError) and (tmp_path / "o" / "pairs.jsonl").read_text() == "mine\n"
    assert sorted(p.name for p in gsm.iterdir()) == ["test.jsonl"]


def test_threads_option_sets_torch_threads_for_the_command(tmp_path):
    import torch
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401
    from probekit_cli.app import app

    before = torch.get_num_threads()
    try:
        out = tmp_path / "other"
        result = CliRunner().invoke(app, ["--threads", "1", "data", "synth", "--n-problems", "2", "--out", str(tmp_path / "synth")])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        result = CliRunner().invoke(app, ["--threads", "-1", "data", "synth", "--n-problems", "2", "--out", str(out)])
        assert isinstance(result.exception, ProbekitError) and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", [str(2**31), "99999999999", "4097", "-1", "abc", "1.5"])
def test_a_thread_count_out_of_range_is_one_line_naming_where_it_came_from(tmp_path, monkeypatch, capsys, value):
    """Issue 19, defect 17: PROBEKIT_THREADS beyond the C int range was an overflow traceback (checked on 904a079)."""
    import torch

    from tests.helpers import assert_one_line_error, run_cli

    before = torch.get_num_threads()
    monkeypatch.setenv("PROBEKIT_THREADS", value)
    code, err = run_cli(monkeypatch, capsys, "data", "synth", "--n-problems", "2", "--out", tmp_path / "a")
    assert_one_line_error(code, err, "$PROBEKIT_THREADS", "from 0", "4096", repr(value))
    monkeypatch.setenv("PROBEKIT_THREADS", "1")
    code, err = run_cli(monkeypatch, capsys, "--threads", value, "data", "synth", "--n-problems", "2", "--out", tmp_path / "b")
    assert_one_line_error(code, err, "--threads", repr(value))
    assert "PROBEKIT_THREADS" not in err and torch.get_num_threads() == before and not (tmp_path / "a").exists()


def test_out_help_no_longer_promises_replacement():
    from probekit_cli.data_cmd import OUT_HELP

    assert "replacing earlier ones" not in OUT_HELP


# ---- 11. the library never imports the CLI ---------------------------------------------------


def test_extract_reports_progress_through_the_protocol_and_imports_no_cli(tiny, traj_file, tmp_path):
    recorder = ProgressRecorder()
    extract(extract_options(traj_file, tmp_path / "st"), loaded=tiny, progress=recorder)
    events = recorder.events
    (_, name, total, unit), *rest = events
    assert name == "extract" and unit == "tokens" and total > 0
    assert sum(e[1] for e in rest if e[0] == "advance") == total and rest[-1] == ("close",)
    code = "import sys, probekit.extract.run, probekit.store, probekit.data.schema; print([m for m in sys.modules if m == 'cli' or m.startswith('probekit_cli.')])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
