"""A store's integrity (issue 19, defects 11, 12, 13 and the store half of 15): each test failed before it.

Damage is done for real: bits of a shard file are flipped where HDF5 keeps a dataset's bytes, manifests are
edited as a hand would, and a full disk is a real file-size limit (RLIMIT_FSIZE) on a real `extract` or
`generate` process. Before: a flipped offset dropped a trajectory silently or asked for petabytes (traceback), a
flipped label or state changed results silently, a full disk ended in a segmentation fault (exit 139), a
damaged manifest was a KeyError, AttributeError or UnicodeDecodeError traceback, and an edited width passed
the open and broke `fit` later.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from probekit_cli.main import app
from probekit.data.schema import write_trajectories
from probekit.errors import ProbekitError
from probekit.store import Store, shard_name
from tests.helpers import answered_store, assert_one_line_error, extract_options, fit, planted_store, run_cli, toy_trajectories

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


def flip_bit(shard: Path, dataset: str, byte: int, bit: int = 0) -> None:
    """Flip one bit of the file where HDF5 stores `dataset` (its first chunk when chunked), `byte` bytes in."""
    with h5py.File(shard, "r") as fh:
        ds = fh[dataset]
        start = ds.id.get_offset() if ds.chunks is None else ds.id.get_chunk_info(0).byte_offset
    with open(shard, "r+b") as fh:
        fh.seek(start + byte)
        value = fh.read(1)[0]
        fh.seek(start + byte)
        fh.write(bytes([value ^ (1 << bit)]))


def set_attr(shard: Path, name: str, value) -> None:
    with h5py.File(shard, "r+") as fh:
        fh.attrs[name] = value


def edit_manifest(store: Path, edit) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps(edit(manifest) or manifest))


def without_checksums(manifest: dict) -> None:
    """The manifest as probekit wrote it before shards carried checksums."""
    manifest["shards"].pop("checksums", None)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """24 trajectories of 16-wide states, 8 a shard: 3 shards."""
    return planted_store(tmp_path_factory.mktemp("pristine") / "store", n_groups=6)


@pytest.fixture()
def store(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "store"))


# ---- 11. offsets are checked when a shard is opened ----------------------------------------------------------
@pytest.mark.parametrize("damage,message", [
    (lambda s: flip_bit(s, "offsets", 3 * 8, 6), "offsets decrease"),  # the 4th offset moves by 64 rows
    (lambda s: flip_bit(s, "offsets", 8 * 8 + 6), "rows, its offsets 8 and 281474976710"),  # the last one: petabytes
    (lambda s: flip_bit(s, "offsets", 0), "offsets start at 1, not 0"),
    (lambda s: set_attr(s, "n_rows", 3), "it records 8 trajectories and 3 rows"),
], ids=["order", "petabytes", "first", "n_rows"])
def test_damaged_offsets_are_refused_on_open_naming_the_shard(store, damage, message):
    """Checked on their own (no checksums, as in a store written before them), so old stores are covered too."""
    edit_manifest(store, without_checksums)
    damage(store / shard_name(1))
    with pytest.raises(ProbekitError) as err:
        Store(store)
    assert str(err.value).startswith(f"{store / shard_name(1)}: ") and message in str(err.value)


def test_an_offset_flip_that_keeps_the_order_is_caught_by_the_meta_checksum(store):
    """+1 row to one trajectory, -1 to the next: every count still agrees; only the checksum of the offsets tells."""
    flip_bit(store / shard_name(2), "offsets", 3 * 8, 0)
    with pytest.raises(ProbekitError, match=rf"{shard_name(2)}: its offsets or meta .* do not match the sha256"):
        Store(store)


# ---- 12. checksums: recorded by finalize, compared on open, on whole reads, and by `store verify` -----------------
def test_finalize_records_the_size_and_sha256_of_every_shard(store):
    checksums = json.loads((store / "manifest.json").read_text())["shards"]["checksums"]
    files = [store / shard_name(s) for s in range(3)]
    assert [c["bytes"] for c in checksums] == [f.stat().st_size for f in files]
    assert [c["sha256"] for c in checksums] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


def test_a_flipped_label_is_refused_on_open(store):
    before = Store(store).meta.label[8]
    flip_bit(store / shard_name(1), "meta/label", 0)  # trajectory t8's label, 1 -> 0
    with pytest.raises(ProbekitError, match=rf"{shard_name(1)}: its offsets or meta \(ids, groups, answers, labels"):
        Store(store)
    edit_manifest(store, without_checksums)
    assert Store(store).meta.label[8] == 1 - before  # what a store written before checksums cannot tell


def test_a_flipped_state_is_refused_when_the_shard_is_read_whole(store):
    reference = Store(store).load_layer(2)
    flip_bit(store / shard_name(1), "states/L2", 100, 3)  # a mantissa bit: the state stays finite
    damaged = Store(store)  # the metadata is intact
    with pytest.raises(ProbekitError, match=rf"{shard_name(1)}: its sha256 does not match the one .*manifest.json recorded"):
        damaged.load_layer(2)
    blocks = damaged.iter_shards(2)
    assert np.array_equal(next(blocks).states, reference[:damaged.meta.row_start[8]])  # shard 0 is whole
    with pytest.raises(ProbekitError, match=shard_name(1)):
        next(blocks)


def test_store_verify_names_the_first_damaged_shard(store, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "store", "verify", store, "--no-progress")
    assert code == 0 and "3 shards, 24 trajectories" in err and "sha256 of every shard matches" in err
    flip_bit(store / shard_name(2), "states/L2", 40, 2)
    flip_bit(store / shard_name(1), "states/L2", 200, 2)
    code, err = run_cli(monkeypatch, capsys, "store", "verify", store, "--no-progress")
    assert_one_line_error(code, err, str(store / shard_name(1)), "sha256")


def test_verify_refuses_a_non_finite_state_where_no_checksum_says_so(store, monkeypatch, capsys):
    """A store written before checksums, or by another tool: verify still reads every state."""
    edit_manifest(store, without_checksums)
    with h5py.File(store / shard_name(2), "r+") as fh:
        fh["states/L2"][3, 1] = np.inf  # row 3 of shard 2: of its first trajectory, t16
    row = Store(store).meta.row_start[16] + 3
    code, err = run_cli(monkeypatch, capsys, "store", "verify", store, "--no-progress")
    assert_one_line_error(code, err, str(store / shard_name(2)), f"non-finite hidden state at layer 2, row {row} (trajectory 't16')")


def test_a_store_written_before_checksums_still_opens_reads_and_verifies(pristine, store, monkeypatch, capsys):
    edit_manifest(store, without_checksums)
    old = Store(store)
    assert old.checksums is None and np.array_equal(old.load_layer(2), Store(pristine).load_layer(2))
    code, err = run_cli(monkeypatch, capsys, "store", "verify", store, "--no-progress")
    assert code == 0 and "no checksums to compare" in err
    result = CliRunner().invoke(app, ["store", "verify", str(store), "--json", "--no-progress"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {
        "store": str(store), "shards": 3, "trajectories": 24, "rows": old.n_rows, "layers": [2],
        "bytes": sum((store / shard_name(s)).stat().st_size for s in range(3)), "checksums": False}


# ---- 15. the manifest's shape, and shards that agree with it ---------------------------------------------------
def _set(path: str, value):
    def edit(manifest: dict) -> None:
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


@pytest.mark.parametrize("damage,where,message", [
    (lambda m: m.write_bytes(b'{"layers": "\xff"}'), "manifest.json", "not UTF-8"),
    (lambda m: m.write_text("[1, 2]"), "manifest.json", "not a valid store manifest: expected a JSON object, got a list"),
    (lambda m: edit_manifest(m.parent, lambda d: d.pop("layers") and None), "manifest.json", "field 'layers': Field required"),
    (lambda m: edit_manifest(m.parent, _set("shards.n", 0)), "manifest.json", "field 'shards.n': Input should be greater than or equal to 1"),
    (lambda m: edit_manifest(m.parent, _set("layers", "2")), "manifest.json", "field 'layers': Input should be a valid list"),
    (lambda m: edit_manifest(m.parent, _set("model.hidden_size", "16")), "manifest.json", "field 'model.hidden_size': Input should be a valid integer"),
    (lambda m: edit_manifest(m.parent, lambda d: d["shards"]["checksums"].pop() and None), "manifest.json", "2 checksums for 3 shards"),
    (lambda m: edit_manifest(m.parent, _set("layers", [2, 3])), shard_name(0), "no dataset 'states/L3' (the manifest lists layers [2, 3])"),
    (lambda m: edit_manifest(m.parent, _set("model.hidden_size", 17)), shard_name(0), "states/L2 is 16 wide, but the manifest's model.hidden_size is 17"),
    (lambda m: edit_manifest(m.parent, _set("stats.n_rows_stored", 5)), "manifest.json", "records 24 trajectories and 5 rows, but its shards hold 24 and"),
], ids=["not-utf8", "a-list", "no-layers", "no-shards", "layers-a-string", "width-a-string", "checksums-missing", "layer-without-dataset",
        "edited-width", "edited-stats"])
def test_a_damaged_manifest_is_one_error_naming_the_file(store, damage, where, message):
    damage(store / "manifest.json")
    with pytest.raises(ProbekitError) as err:
        Store(store)
    assert str(err.value).startswith(str(store / where)) and message in str(err.value), err.value


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from probekit.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def _extract_options(tmp_path: Path, **kw):
    """The toy trajectories written to tmp_path/t.jsonl, extracted into tmp_path/st."""
    write_trajectories(tmp_path / "t.jsonl", toy_trajectories())
    return extract_options(tmp_path / "t.jsonl", tmp_path / "st", **kw)


def test_rerunning_extract_replaces_a_shard_damaged_since_it_was_recorded(tiny, tmp_path):
    """Not only refused: the same command extracts the damaged shard again (and records its new checksum), the others stay."""
    from probekit.extract.run import extract

    opts = _extract_options(tmp_path)
    extract(opts, loaded=tiny)
    reference = Store(opts.out).load_layer(2)
    flip_bit(opts.out / shard_name(1), "states/L2", 100, 3)
    again = extract(opts, loaded=tiny)
    assert again.shards_done == [1] and again.shards_skipped == [0, 2] and again.complete
    repaired = Store(opts.out)
    assert repaired.verify()["checksums"]
    np.testing.assert_allclose(repaired.load_layer(2), reference, rtol=0, atol=2e-5)


def test_extract_resumes_only_over_a_valid_manifest(tiny, tmp_path):
    """A store folder whose manifest was damaged is refused by a re-run, and replaced with --overwrite."""
    from probekit.extract.run import extract

    extract(_extract_options(tmp_path), loaded=tiny)
    (tmp_path / "st" / "manifest.json").write_text("[]")
    with pytest.raises(ProbekitError, match=r"manifest.json: not a valid store manifest: .*; pass --overwrite"):
        extract(_extract_options(tmp_path), loaded=tiny)
    assert extract(_extract_options(tmp_path, overwrite=True), loaded=tiny).complete
    assert Store(tmp_path / "st").verify()["checksums"]


# ---- 13. a full disk while a shard is written ------------------------------------------------------------------
def _file_size_limit(limit: int):
    """For the child: files may not grow past `limit` bytes; SIGXFSZ ignored, so a write past it fails with EFBIG,
    the error a full disk gives (ENOSPC) in every way that matters here."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("command", ["extract", "generate"])
def test_a_full_disk_while_a_shard_is_written_is_one_line_and_leaves_no_shard(command, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A real limit on a real process (no root, no tmpfs): the shard (~100 kB) cannot be written, the small files
    before it (marker, manifest, pairs; < 16 kB) can. Before: an h5py RuntimeError, then a segmentation fault."""
    out = tmp_path / "out"
    if command == "extract":
        write_trajectories(tmp_path / "t.jsonl", toy_trajectories())
        args = ["extract", tmp_path / "t.jsonl", "--out", out, "--layers", "1,2,4", "--shard-size", "4", "--dtype", "float32"]
        store = out
    else:
        (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "Question: 2 + 2?", "gold": "4"}\n')
        args = ["generate", tmp_path / "p.jsonl", "--out", out, "--samples", "4", "--max-new-tokens", "60"]
        store = out / "store"
    cmd = [sys.executable, "-m", "probekit", *map(str, args), "--model", str(tiny_model_dir), "--no-progress"]
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # transformers' weight-loading bar
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(16_000))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {store / shard_name(0)}: cannot write") and "(File too large)" in proc.stderr, proc.stderr
    # nothing of the failed shard anywhere under --out (generate writes into its staging area until the set is committed)
    assert not [p.name for p in out.rglob("*") if p.name.startswith((shard_name(0), f".{shard_name(0)}.")) and not p.name.endswith(".lock")]
    # the same command without the limit (in this process: only the limited run needs a process of its own)
    code, err = run_cli(monkeypatch, capsys, *args, "--model", tiny_model_dir, "--overwrite", "--no-progress")
    assert code == 0, err
    assert Store(store).verify()["checksums"]


# ---- every command that reads a store, given a damaged one ---------------------------------------------------
@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    """A store with answers and a probe fitted on it (what filter needs)."""
    root = tmp_path_factory.mktemp("answered")
    store = answered_store(root / "store", n_groups=12)
    return store, fit(store, root / "ckpt", widths=(8,), rep_size=4, epochs=2, n_boot=20)


DAMAGES = {
    "manifest": (lambda s: edit_manifest(s, _set("shards.n", 0)), "manifest.json"),
    "offsets": (lambda s: flip_bit(s / shard_name(1), "offsets", 8 * 8 + 6), shard_name(1)),
    "states": (lambda s: flip_bit(s / shard_name(1), "states/L2", 100, 3), shard_name(1)),
}
COMMANDS = {
    "fit": lambda s, ck, out: ["fit", "--store", s, "--out", out, "--epochs", "1"],
    "sweep": lambda s, ck, out: ["sweep", "--store", s, "--out", out, "--lam", "0", "--seeds", "0", "--widths", "8"],
    "eval": lambda s, ck, out: ["eval", "--ckpt", ck, "--store", s, "--out", out],
    "filter": lambda s, ck, out: ["filter", "--ckpt", ck, "--store", s, "--out", out, "--no-plots"],
    "store verify": lambda s, ck, out: ["store", "verify", s],
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reading_a_store_refuses_a_damaged_one_in_one_line(command, damage, answered, tmp_path, monkeypatch, capsys):
    source, ckpt = answered
    store = Path(shutil.copytree(source, tmp_path / "store"))
    spoil, where = DAMAGES[damage]
    spoil(store)
    code, err = run_cli(monkeypatch, capsys, *COMMANDS[command](store, ckpt.path, tmp_path / "out"), "--no-progress")
    assert_one_line_error(code, err, str(store / where))
