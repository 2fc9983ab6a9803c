"""Public data sets that fetch themselves: pinned sources, verified bytes, one cache.

Every file comes from its data set's own public repository at a pinned commit
and has a pinned sha256, so a fetched copy is byte for byte the one the
recorded results were measured on (the hashes are those of the copies in the
project's shared data folder). Files land in `<probekit cache>/data/` in the
layout every `--data-dir` reads (`gsm8k/train.jsonl`, `hh_rlhf/...`), so that
folder can be passed as `--data-dir` like a hand-made one.

A download is written under a temporary name and renamed only once its hash
matches; a mismatch or a failed download leaves nothing behind. A cached file
is hashed again before it is trusted, and a damaged one is fetched anew.

MATH comes as the 500 held-out test problems of openai/prm800k (`math_splits/
test.jsonl`, the set PRM800K and later work evaluate on): MATH's own
distribution is a tarball on a personal web page, not pinnable files in a
repository, and its Hugging Face copy was withdrawn.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from probekit.cache import cache_root
from probekit.errors import ProbekitError
from probekit.io import atomic_path, sha256_file
from probekit.progress import Progress, or_null

MIRROR_ENV = "PROBEKIT_DATA_MIRROR"  # base URL of a copy in the data-dir layout (an internal mirror; tests)
TIMEOUT_S = 60  # a connection that stalls this long counts as failed
CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One file of a data set: where it goes in the data-dir layout, where it comes from, what it must hash to."""

    path: str  # relative to the data folder, with "/" separators
    url: str  # canonical public location, pinned to a commit
    sha256: str
    size: int  # bytes; the progress bar's total


_GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c"
_HH = "https://raw.githubusercontent.com/anthropics/hh-rlhf/354e5c3cb8960630860dd5774a6ac2a58313bf4d"
# helpful-base is stored with Git LFS: raw.githubusercontent.com would serve the pointer, media.* the content.
# Its sha256 and size are the LFS pointer's oid and size at that commit (the oid is the content's sha256).
_HH_LFS = "https://media.githubusercontent.com/media/anthropics/hh-rlhf/354e5c3cb8960630860dd5774a6ac2a58313bf4d"

# Also Git LFS: the pinned sha256 and size are its pointer's oid and size at that commit.
_PRM800K_LFS = "https://media.githubusercontent.com/media/openai/prm800k/7ecc794703b2877f63226f2477a49b34f9b25163"
_PRM800K = "https://raw.githubusercontent.com/openai/prm800k/7ecc794703b2877f63226f2477a49b34f9b25163"

# The OOD sets of the paper's evaluation, from the files NeMo-Skills' prepare scripts read (the problems of the OpenMath
# predictions the official code scores; probekit.data.ood). gsm-hard: NeMo-Skills reads the Hugging Face copy of PAL's
# file, taken here from PAL's repository itself; MAWPS: NeMo-Skills reads microsoft/ToRA's copies, whose git blobs are
# these PAL files byte for byte. sha256 and size are of the bytes at the pinned commit.
_PAL = "https://raw.githubusercontent.com/reasoning-machines/pal/f81ca2a9777f002f98a6b4d0f10b61bd5c8feb02"
_SVAMP = "https://raw.githubusercontent.com/arkilpatel/SVAMP/689d7ccac74b9983a2ac7cc3b264f441b99e7c53"
_ASDIV = "https://raw.githubusercontent.com/chaochun/nlu-asdiv-dataset/883f90a9a65bf00304ba8f37423910fe743abc47"
_ALGEBRA222 = "https://raw.githubusercontent.com/joyheyueya/declarative-math-word-problem/7dc99c39f53e108103a84ff8c7ef5d4857ad34ff"
_PAL_LICENSE = "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"  # Apache-2.0
_MAWPS = {"addsub": ("2fae2c92530cdf1ac0487db9a90e68d6af84049d755c07c4486411c1d7f43e75", 70911),
          "singleeq": ("07bec92bae226dd5231a966e907a0f097ba3170a1557c73ceeb135caad8d09f8", 86536),
          "singleop": ("feb012e7ed5503cdb96fd127d539692b033000e9134655acaf4f4e0091328e94", 75278),
          "multiarith": ("12e8295088364af21fb6591dbdbd1dda452aade57227f63d725677471ded2951", 109522)}

_GSM8K_LICENSE = DataFile("gsm8k/LICENSE", f"{_GSM8K}/LICENSE",
                          "86bbb73e855821d7c401912fd4bf82e34313e6e3b6fd6f909f2b6cc9e209a53b", 1062)
_HH_LICENSE = DataFile("hh_rlhf/LICENSE", f"{_HH}/LICENSE",
                       "d4fb18db48757e273261a5597b8a09381de8073da060474ce33d0643e06c875e", 1066)
_PRM800K_LICENSE = DataFile("math/LICENSE", f"{_PRM800K}/LICENSE",
                            "22d61a2226e035da51c56149c3358c36d1f61716435866bc6e6fe0e54c7270db", 1062)

# Each data set brings its licence file along (MIT, Apache-2.0 and CC notices travel with copies).
DATASETS: dict[str, tuple[DataFile, ...]] = {
    "gsm8k": (
        DataFile("gsm8k/train.jsonl", f"{_GSM8K}/grade_school_math/data/train.jsonl",
                 "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206),
        DataFile("gsm8k/test.jsonl", f"{_GSM8K}/grade_school_math/data/test.jsonl",
                 "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738),
        _GSM8K_LICENSE,
    ),
    "gsm8k-model-solutions": (
        DataFile("gsm8k/example_model_solutions.jsonl", f"{_GSM8K}/grade_school_math/data/example_model_solutions.jsonl",
                 "4bc62db838f8418365d51c627bd66294cbdca9fb7f01519cb13f0dce8c51580b", 2563513),
        _GSM8K_LICENSE,
    ),
    "hh-rlhf-harmless": (
        DataFile("hh_rlhf/harmless-base/test.jsonl.gz", f"{_HH}/harmless-base/test.jsonl.gz",
                 "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03", 742801),
        _HH_LICENSE,
    ),
    "hh-rlhf-helpful": (
        DataFile("hh_rlhf/helpful-base/test.jsonl.gz", f"{_HH_LFS}/helpful-base/test.jsonl.gz",
                 "8be3fc1a13b27901631696f2be6f184c799f1baeaf145f53ac5db24960adc37b", 875191),
        _HH_LICENSE,
    ),
    "math": (
        DataFile("math/test.jsonl", f"{_PRM800K_LFS}/prm800k/math_splits/test.jsonl",
                 "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132", 446564),
        _PRM800K_LICENSE,
    ),
    "gsm-hard": (
        DataFile("gsm_hard/gsmhardv2.jsonl", f"{_PAL}/datasets/gsmhardv2.jsonl",
                 "2032b0188a49ac0ec38cbe1e695e7d62d6dddc44bbb64f920728aca710e9ddef", 1138151),
        DataFile("gsm_hard/LICENSE", f"{_PAL}/LICENSE", _PAL_LICENSE, 11357),
    ),
    "svamp": (
        DataFile("svamp/SVAMP.json", f"{_SVAMP}/SVAMP.json", "5be77703a6d891ae476d7c082787ad361392aa02453b132516cdd5f4e7934e3e", 339970),
        DataFile("svamp/LICENSE", f"{_SVAMP}/LICENSE", "07ce3a34de7a865345634f9278bc26ddcacc2d0defd348c28e3f4603448b9ba4", 1068),
    ),
    "asdiv": (  # CC BY-NC 4.0, stated in its README (the repository has no LICENSE file)
        DataFile("asdiv/ASDiv.xml", f"{_ASDIV}/dataset/ASDiv.xml", "ef8904068482919ac48c8eeaaf6df344b8a308ba66d048c2d4d87eab82dc4929", 947401),
        DataFile("asdiv/README.md", f"{_ASDIV}/README.md", "929249a72b2d0b6d3b144acd21886f7e728faa945b10f04b7ba2995138845783", 3643),
    ),
    "mawps": (
        *(DataFile(f"mawps/{name}.jsonl", f"{_PAL}/datasets/mawps{name}.jsonl", sha, size) for name, (sha, size) in _MAWPS.items()),
        DataFile("mawps/LICENSE", f"{_PAL}/LICENSE", _PAL_LICENSE, 11357),
    ),
    "algebra222": (  # CC BY-SA 4.0
        DataFile("algebra222/algebra222.csv", f"{_ALGEBRA222}/algebra222.csv",
                 "9fa0171d2d427c5b3df1c3ba543317e32366ca5d2c0a843f55d40cec6b528a28", 61752),
        DataFile("algebra222/LICENSE", f"{_ALGEBRA222}/LICENSE", "2003829cf643d61b00a76088dd31bb11b8029546f24c56b39fd492adb9281483", 20139),
    ),
}


@dataclass(frozen=True)
class Fetched:
    """What happened to one file: `status` is "cached", "downloaded" or "replaced damaged copy"."""

    dataset: str
    path: Path
    url: str
    sha256: str
    bytes: int
    status: str

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "path": str(self.path), "url": self.url, "sha256": self.sha256,
                "bytes": self.bytes, "status": self.status}


def data_cache_dir() -> Path:
    """`data/` in the probekit cache folder: where fetched data sets live, in the `--data-dir` layout."""
    return cache_root() / "data"


def _dataset(name: str) -> tuple[DataFile, ...]:
    try:
        return DATASETS[name]
    except KeyError:
        raise ProbekitError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}") from None


def fetch_datasets(names: Iterable[str], root: Path | None = None, mirror: str | None = None,
                   progress: Progress | None = None) -> list[Fetched]:
    """Make every file of the named data sets present and verified under `root` (default: the cache's data folder).

    `mirror` (default `$PROBEKIT_DATA_MIRROR`) is the base URL of a copy laid out like a data folder
    (http(s):// or file://); without it each file comes from its pinned public URL. A file shared by
    two data sets (a licence) is handled once.
    """
    root = Path(root) if root is not None else data_cache_dir()
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    files = {f.path: (name, f) for name in names for f in _dataset(name)}  # validate every name before any download
    return [_fetch_file(name, f, root, mirror, progress) for name, f in files.values()]


def _fetch_file(dataset: str, file: DataFile, root: Path, mirror: str | None, progress: Progress | None) -> Fetched:
    target = root / file.path
    url = f"{mirror.rstrip('/')}/{file.path}" if mirror else file.url
    got = None  # the sha256 of a cached copy that is not the pinned file
    if target.is_dir():
        raise ProbekitError(f"{target}: is a folder, not the data file {file.path}")
    if target.exists():
        try:
            got = sha256_file(target)
        except OSError as exc:
            raise ProbekitError(f"{target}: cannot read ({exc.strerror or exc})") from None
        if got == file.sha256:
            return Fetched(dataset, target, url, file.sha256, target.stat().st_size, "cached")
    try:
        size = _download(file, url, target, root, progress)
    except _Unreachable as exc:
        if got is None:
            raise
        raise ProbekitError(
            f"{target}: the cached copy failed its sha256 check (expected {file.sha256}, got {got}) and no good copy can be "
            f"downloaded from {url} ({exc.reason}); it is left as it is: fetch again when online (or with --mirror), or "
            f"replace it by hand with the right file (sha256 {file.sha256})"
        ) from None
    return Fetched(dataset, target, url, file.sha256, size, "replaced damaged copy" if got is not None else "downloaded")


def _download(file: DataFile, url: str, target: Path, root: Path, progress: Progress | None) -> int:
    """Stream `url` into a temporary file beside `target`, keep it only if its sha256 is the pinned one; its size."""
    try:
        with atomic_path(target) as tmp:
            got, size = _stream(file, url, tmp, root, progress)
            if got != file.sha256:
                raise ProbekitError(f"{file.path}: refused the download from {url}: sha256 {got}, expected "
                                    f"{file.sha256} (nothing was kept)")
    except OSError as exc:  # the cache folder, not the network: network errors are ProbekitErrors by now
        raise ProbekitError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return size


def _stream(file: DataFile, url: str, tmp: Path, root: Path, progress: Progress | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    task = or_null(progress).task(f"fetch {file.path}", file.size, "B")
    try:
        with open(tmp, "wb") as out:
            with _network_errors(file, url, root):
                response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
            with response:
                while True:
                    with _network_errors(file, url, root):
                        block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    task.advance(len(block))
    finally:
        task.close()
    return digest.hexdigest(), size


@contextlib.contextmanager
def _network_errors(file: DataFile, url: str, root: Path) -> Iterator[None]:
    """Turn a failure of the connection (not of the local disk) into one line that says how to place the file by hand."""
    try:
        yield
    except urllib.error.HTTPError as exc:
        raise _unreachable(file, url, root, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _unreachable(file, url, root, str(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # timeouts, resets, a malformed mirror URL
        raise _unreachable(file, url, root, str(exc) or type(exc).__name__) from None


class _Unreachable(ProbekitError):
    """A download that failed on the connection, not on the bytes (`reason` says how)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _unreachable(file: DataFile, url: str, root: Path, reason: str) -> ProbekitError:
    return _Unreachable(
        f"{file.path}: cannot download {url} ({reason}); to place it by hand, save it as DIR/{file.path} "
        f"(sha256 {file.sha256}) and pass --data-dir DIR (DIR may be {root})", reason
    )


def resolve_data_dir(arg: str | os.PathLike | None, *, default: Path | None = None, need: Sequence[str] = (),
                     fetch: bool = True, mirror: str | None = None, progress: Progress | None = None) -> Path:
    """The data folder a `--data-dir` value means.

    - a path (anything that is not a data-set name; write `./gsm8k` for a folder of that name) is used as is;
    - a data-set name means the cache's data folder, with that data set (and `need`) fetched;
    - nothing: `default` (e.g. the project's `../shared/data`) when it exists, so offline runs keep reading
      a prepared copy; otherwise the cache's data folder with `need` fetched.
    With `fetch=False` nothing is downloaded (tests): names and the fallback give the cache folder as it is.
    """
    if arg is not None and str(arg) not in DATASETS:
        return Path(arg).expanduser()
    if arg is None and default is not None and Path(default).is_dir():
        return Path(default)
    root = data_cache_dir()
    if fetch:
        fetch_datasets(dict.fromkeys(([str(arg)] if arg is not None else []) + list(need)), root, mirror, progress)
    return root
