"""`probekit data fetch` and the data-folder resolver, against a local HTTP server (never the network).

Planted data sets (bytes made here, their sha256 pinned from those bytes) exercise
download, verification, caching, refusal and the offline error; the real files of
../shared/data, served the same way, check that the pinned hashes are theirs.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import threading
from pathlib import Path

import pytest

from probekit.data import fetch
from probekit.data.fetch import DataFile, fetch_datasets, resolve_data_dir
from probekit.errors import ProbekitError
from tests.helpers import assert_one_line_error, closed_port_url, files_under, run_cli, sha256


class Server:
    """A static file server on 127.0.0.1 over `root` that records every path it was asked for."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                log.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path):
    """A folder of planted files in the data-dir layout, and a server over it."""
    root = tmp_path / "served"
    (root / "toy" / "sub").mkdir(parents=True)
    (root / "toy" / "a.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(50)))
    (root / "toy" / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(b'{"chosen": "x", "rejected": "y"}\n' * 20))
    server = Server(root)
    yield root, server
    server.close()


def plant(monkeypatch, served_root: Path, base_url: str, name: str = "toy", pin: dict[str, str] | None = None) -> tuple[DataFile, ...]:
    """Register data set `name` whose files are those under served_root/toy, pinned to their own sha256 unless `pin` says otherwise."""
    files = tuple(
        DataFile(p.relative_to(served_root).as_posix(), f"{base_url}/{p.relative_to(served_root).as_posix()}",
                 (pin or {}).get(p.name, sha256(p.read_bytes())), p.stat().st_size)
        for p in sorted((served_root / "toy").rglob("*")) if p.is_file()
    )
    monkeypatch.setitem(fetch.DATASETS, name, files)
    return files


# --- download, verification, cache -------------------------------------------------------------------

def test_download_is_verified_cached_and_not_repeated(served, cache, monkeypatch):
    root, server = served
    files = plant(monkeypatch, root, server.url)
    first = fetch_datasets(["toy"])
    assert [f.status for f in first] == ["downloaded", "downloaded"]
    for f in files:
        assert (cache / f.path).read_bytes() == (root / f.path).read_bytes()
    assert sorted(server.requests) == sorted(f"/{f.path}" for f in files)
    assert files_under(cache) == sorted(f.path for f in files)  # no temporary file left beside them

    second = fetch_datasets(["toy"])
    assert [f.status for f in second] == ["cached", "cached"]
    assert len(server.requests) == len(files)  # nothing downloaded again
    assert [f.bytes for f in second] == [f.size for f in files]


def test_wrong_sha256_is_refused_and_nothing_is_left(served, cache, monkeypatch):
    root, server = served
    expected = sha256(b"some other bytes")
    plant(monkeypatch, root, server.url, pin={"a.jsonl": expected})
    got = sha256((root / "toy" / "a.jsonl").read_bytes())
    with pytest.raises(ProbekitError) as exc:
        fetch_datasets(["toy"])
    msg = str(exc.value)
    assert "\n" not in msg and "toy/a.jsonl" in msg and expected in msg and got in msg
    assert "toy/a.jsonl" not in files_under(cache)
    assert not [n for n in files_under(cache) if n.endswith(".tmp")]


def test_damaged_cached_file_is_detected_and_fetched_again(served, cache, monkeypatch):
    root, server = served
    files = plant(monkeypatch, root, server.url)
    fetch_datasets(["toy"])
    damaged = cache / files[0].path
    damaged.write_bytes(damaged.read_bytes()[:-7])  # a truncated copy (an interrupted hand copy, a full disk)
    result = fetch_datasets(["toy"])
    assert [f.status for f in result] == ["replaced damaged copy", "cached"]
    assert damaged.read_bytes() == (root / files[0].path).read_bytes()
    assert server.requests.count(f"/{files[0].path}") == 2 and server.requests.count(f"/{files[1].path}") == 1


def test_damaged_cached_file_offline_is_an_error_and_stays_as_it_was(served, cache, monkeypatch):
    root, server = served
    files = plant(monkeypatch, root, server.url)
    fetch_datasets(["toy"])
    damaged = cache / files[0].path
    damaged.write_bytes(b"not the data")
    with pytest.raises(ProbekitError) as exc:
        fetch_datasets(["toy"], mirror=closed_port_url())
    assert damaged.read_bytes() == b"not the data"
    _assert_says_the_cached_copy_failed_its_sha256(str(exc.value), damaged, files[0].sha256, sha256(b"not the data"))


def _assert_says_the_cached_copy_failed_its_sha256(msg: str, damaged: Path, expected: str, got: str) -> None:
    """Issue 19, defect 18: the message said only "cannot download" and told the user to save the file where the damaged
    copy already was (checked on 904a079); it must say that the cached copy failed its sha256, and where it is."""
    assert "\n" not in msg and msg.startswith(f"{damaged}: the cached copy failed its sha256 check"), msg
    assert f"expected {expected}, got {got}" in msg and "save it as DIR" not in msg
    assert f"replace it by hand with the right file (sha256 {expected})" in msg and "fetch again when online" in msg


def test_cli_offline_with_a_damaged_cached_copy_says_it_failed_its_sha256(served, cache, monkeypatch, capsys):
    root, server = served
    files = plant(monkeypatch, root, server.url)
    monkeypatch.setenv(fetch.MIRROR_ENV, server.url)  # the local mirror: the first fetch works
    code, err = run_cli(monkeypatch, capsys, "data", "fetch", "toy", "--no-progress")
    assert code == 0, err
    damaged = cache / files[1].path
    damaged.write_bytes(damaged.read_bytes()[:-3])  # a truncated copy
    got = sha256(damaged.read_bytes())
    monkeypatch.setenv(fetch.MIRROR_ENV, closed_port_url())  # offline
    code, err = run_cli(monkeypatch, capsys, "data", "fetch", "toy", "--no-progress")
    assert_one_line_error(code, err)
    _assert_says_the_cached_copy_failed_its_sha256(" ".join(ln.strip() for ln in err.splitlines())[len("error: "):], damaged,
                                                   files[1].sha256, got)
    assert sha256(damaged.read_bytes()) == got  # left as it was


def test_unreachable_server_names_the_file_url_and_how_to_place_it(served, cache, monkeypatch):
    root, server = served
    files = plant(monkeypatch, root, closed_port_url())
    with pytest.raises(ProbekitError) as exc:
        fetch_datasets(["toy"])
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{files[0].path}: cannot download {files[0].url} (")
    assert f"save it as DIR/{files[0].path}" in msg and "--data-dir DIR" in msg and str(cache) in msg and files[0].sha256 in msg
    assert files_under(cache) == []


def test_missing_file_on_the_server_is_a_one_line_http_error(served, cache, monkeypatch):
    root, server = served
    plant(monkeypatch, root, server.url + "/nowhere")
    with pytest.raises(ProbekitError, match=r"^toy/a.jsonl: cannot download .*/nowhere/toy/a.jsonl \(HTTP 404 .*--data-dir DIR"):
        fetch_datasets(["toy"])
    assert files_under(cache) == []


def test_mirror_replaces_the_pinned_urls(served, cache, monkeypatch):
    """A mirror (http or file://) laid out like a data folder serves every file; the pinned hashes still decide."""
    root, server = served
    files = plant(monkeypatch, root, closed_port_url())  # the pinned URLs are unreachable
    result = fetch_datasets(["toy"], mirror=server.url + "/")
    assert [f.url for f in result] == [f"{server.url}/{f.path}" for f in files]
    (cache / files[1].path).unlink()
    monkeypatch.setenv(fetch.MIRROR_ENV, root.as_uri())
    assert [f.status for f in fetch_datasets(["toy"])] == ["cached", "downloaded"]
    assert (cache / files[1].path).read_bytes() == (root / files[1].path).read_bytes()


def test_unknown_name_lists_the_data_sets(cache):
    with pytest.raises(ProbekitError, match="unknown data set 'mmlu'; choose from gsm8k, gsm8k-model-solutions, .*, math"):
        fetch_datasets(["mmlu"])


# --- resolver ----------------------------------------------------------------------------------------

def test_resolver_precedence(served, cache, monkeypatch, tmp_path):
    root, server = served
    files = plant(monkeypatch, root, server.url)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    mine = tmp_path / "mine"

    # a path is used as is, even one that does not exist yet, and even with a prepared default
    assert resolve_data_dir(str(mine), default=prepared, need=("toy",)) == mine
    # nothing given: the prepared default when it exists, without any download
    assert resolve_data_dir(None, default=prepared, need=("toy",)) == prepared
    assert server.requests == []
    # fetch=False never downloads, whatever is asked
    assert resolve_data_dir("toy", default=prepared, fetch=False) == cache
    assert resolve_data_dir(None, default=tmp_path / "absent", need=("toy",), fetch=False) == cache
    assert server.requests == [] and files_under(cache) == []
    # nothing given and no prepared copy: the cache, with what the caller needs fetched
    assert resolve_data_dir(None, default=tmp_path / "absent", need=("toy",)) == cache
    assert files_under(cache) == sorted(f.path for f in files)
    # a name means the cache, with that data set fetched; "./toy" is a folder of that name
    monkeypatch.setitem(fetch.DATASETS, "toy2", files[:1])
    (cache / files[0].path).unlink()
    assert resolve_data_dir("toy2", default=prepared) == cache
    assert (cache / files[0].path).is_file()
    assert resolve_data_dir("./toy", default=prepared) == Path("./toy")


# --- CLI ---------------------------------------------------------------------------------------------

def test_cli_offline_is_one_line_and_exit_2(monkeypatch, capsys, cache):
    code, err = run_cli(monkeypatch, capsys, "data", "fetch", "gsm8k", "--mirror", closed_port_url(), "--no-progress")
    assert_one_line_error(code, err, "gsm8k/train.jsonl: cannot download", "/gsm8k/train.jsonl", "--data-dir DIR", str(cache))
    assert files_under(cache) == []


def test_cli_refuses_a_download_with_the_wrong_bytes(monkeypatch, capsys, cache, tmp_path):
    fake = tmp_path / "fake" / "gsm8k"
    fake.mkdir(parents=True)
    (fake / "example_model_solutions.jsonl").write_text('{"question": "not the real file"}\n')
    code, err = run_cli(monkeypatch, capsys, "data", "fetch", "gsm8k-model-solutions", "--mirror", fake.parent.as_uri(), "--no-progress")
    expected = fetch.DATASETS["gsm8k-model-solutions"][0].sha256
    assert_one_line_error(code, err, "gsm8k/example_model_solutions.jsonl: refused the download", expected,
                          sha256((fake / "example_model_solutions.jsonl").read_bytes()))
    assert files_under(cache) == []


@pytest.mark.realdata
def test_pinned_hashes_are_those_of_the_real_files(data_dir, cache):
    """Served from the shared copies, every data set we hold is fetched, verified and readable as --data-dir."""
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401  (registers the commands)
    from probekit_cli.app import app

    names = ["gsm8k", "gsm8k-model-solutions", "hh-rlhf-harmless"]
    server = Server(data_dir)
    try:
        result = CliRunner().invoke(app, ["data", "fetch", *names, "--mirror", server.url, "--json", "--no-progress"])
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["data_dir"] == str(cache) and out["datasets"] == names
    paths = {f["path"] for f in out["files"]}
    assert len(paths) == len(out["files"]) == 6  # two licences, each once
    for f in out["files"]:
        rel = Path(f["path"]).relative_to(cache)
        assert f["status"] == "downloaded" and f["sha256"] == sha256((data_dir / rel).read_bytes()) == sha256(Path(f["path"]).read_bytes())
    from probekit.data.hh import hh_pairs

    trajectories, pairs = hh_pairs(resolve_data_dir("hh-rlhf-harmless", fetch=False) / "hh_rlhf/harmless-base/test.jsonl.gz")
    assert len(pairs) == 2303 and len(trajectories) == 4606  # the counts test_data_adapters finds in the shared copy
