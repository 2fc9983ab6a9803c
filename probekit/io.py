"""Atomic file output, line-checked JSONL input, and the lock file of an output folder.

Outputs are written to a temporary name in the destination folder and renamed
into place only when complete, so a crash never leaves a half-written file
that a later run could mistake for a finished one. `FolderLock` is the
operating-system lock (flock) that `probekit.outputs` takes on every output
folder; it ends with its process, however that ends.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import importlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from probekit.errors import ProbekitError, where

# The OS lock primitive: flock (shared and exclusive) on POSIX, msvcrt's byte lock (exclusive only) on Windows.
fcntl = importlib.import_module("fcntl") if os.name == "posix" else None
msvcrt = importlib.import_module("msvcrt") if os.name == "nt" else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path, directory: bool = False) -> None:
    """Give `path` the mode an ordinary `open`/`mkdir` would (tempfile makes 0600/0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# Write errors of the disk rather than of the data: a full disk, a file-size limit, a quota, a read-only file system.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it onto `dest` on success.

    On any exception the temporary file is removed and `dest` is untouched; a
    full or read-only disk is a ProbekitError naming `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        apply_umask(tmp_path)  # mkstemp makes 0600; outputs get the user's usual mode
        os.replace(tmp_path, dest)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in _STORAGE_ERRORS:  # a full or read-only disk: one line naming the file, not the temporary name
            raise ProbekitError(f"{dest}: cannot write ({exc.strerror or exc}); nothing was replaced") from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def write_jsonl(dest: str | os.PathLike, records: Iterator[dict] | list[dict]) -> int:
    """Write records atomically, one JSON object per line; return the count.

    A record holding a string that is not valid text (see `check_text`) is refused, naming the file and the record,
    and nothing is written: the readers would refuse it.
    """
    n = 0
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            line = json.dumps(rec, ensure_ascii=False, default=json_default)
            if _SURROGATE.search(line):
                check_text(rec, where(dest, n + 1))  # names the field
                raise ProbekitError(f"{where(dest, n + 1)}: not valid text (it holds a lone UTF-16 surrogate)")
            fh.write(line + "\n")
            n += 1
    return n


# A lone UTF-16 surrogate: JSON's \u escapes can spell one ("\ud800"), but it is not a character and UTF-8 cannot encode
# it, so such a string crashes whatever writes or tokenises it later. A pair is decoded into one character by json.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")  # a cheap test of a raw line before the walk of its values


def _not_text(value: Any, at: str = "") -> str | None:
    """Which string of a JSON value (keys included) is not valid text ("field 'meta.notes[2]'", "a key of field
    'meta'"), or None."""
    if isinstance(value, str):
        return f"field '{at}'" if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                return f"a key of field '{at}'" if at else "a field name"
            found = _not_text(item, f"{at}.{key}" if at else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            found = _not_text(item, f"{at}[{k}]")
            if found:
                return found
    return None


def check_text(record: Any, loc: str) -> None:
    """Refuse a record with a string that is not valid text (a lone UTF-16 surrogate), naming `loc` and the field.

    The one check of a record's strings as text: every JSONL reader makes it on each line (`iter_jsonl`) and every
    JSONL writer on each record (`write_jsonl`), so nothing is written that a reader refuses.
    """
    found = _not_text(record)
    if found is not None:
        raise ProbekitError(f"{loc}: {found} is not valid text (it holds a lone UTF-16 surrogate such as \\ud800)")


def json_default(obj: Any) -> Any:
    """numpy scalars and arrays, and paths, as plain JSON (they end up in metrics); the CLI's --json uses it too."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _check_readable_file(path: Path) -> None:
    """Name the path in the one-line error a missing file or a folder would otherwise raise as OSError."""
    if not path.exists():
        raise ProbekitError(f"{path}: file not found")
    if path.is_dir():
        raise ProbekitError(f"{path}: is a folder, not a file")


def open_text(path: str | os.PathLike):
    """Open a text file, transparently decompressing `.gz`."""
    path = Path(path)
    _check_readable_file(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def _open_binary(path: Path):
    _check_readable_file(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line_number, bytes) of a file; read errors (a corrupt .gz, an I/O error) name the file."""
    try:
        with _open_binary(path) as fh:
            yield from enumerate(fh, start=1)
    except (OSError, EOFError) as exc:
        raise ProbekitError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def _parse_line(raw: bytes, loc: str) -> dict | None:
    """The JSON object on one line, None for a blank line; a ProbekitError naming `loc` otherwise."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProbekitError(f"{loc}: not UTF-8") from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProbekitError(f"{loc}: malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ProbekitError(f"{loc}: expected a JSON object, got {type(obj).__name__}")
    if _ESCAPED_SURROGATE.search(line):
        check_text(obj, loc)
    return obj


def iter_jsonl(path: str | os.PathLike, on_invalid: Callable[[ProbekitError], None] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line.

    A line that is not UTF-8, not JSON, not an object or with a string that is not
    valid text (`check_text`) is a ProbekitError naming `file:line`; with `on_invalid` it is handed to that callback and skipped
    instead, so `--skip-invalid` callers can count it. Lines are decoded one by
    one (not by a text-mode reader) so that a bad byte names its line and does
    not end the file.
    """
    path = Path(path)
    for lineno, raw in _raw_lines(path):
        try:
            obj = _parse_line(raw, where(path, lineno))
        except ProbekitError as exc:
            if on_invalid is None:
                raise
            on_invalid(exc)
            continue
        if obj is not None:
            yield lineno, obj


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in a file; a file that is missing, unreadable, not UTF-8 or not JSON is one ProbekitError naming it."""
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ProbekitError(f"{path}: malformed JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise ProbekitError(f"{path}: not UTF-8 text") from None
    except (OSError, EOFError) as exc:
        raise ProbekitError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def validated(model: Any, obj: Any, source: str | os.PathLike) -> Any:
    """`obj` (parsed JSON) checked against the pydantic `model` of its on-disk format, as a `model` instance.

    Every format probekit reads back (checkpoint configs, goal folders, filter
    outputs) declares its shape once, as a pydantic model beside the code that
    writes it; this is the one place that turns a mismatch into the one-line
    error users see: the file, the first bad field (dotted, list items by
    index) and what is wrong with it.
    """
    from pydantic import ValidationError

    if not isinstance(obj, dict):
        raise ProbekitError(f"{source}: expected a JSON object, got {_json_kind(obj)}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ProbekitError(f"{source}: {describe_validation_error(exc)}") from None


def read_validated(path: str | os.PathLike, model: Any) -> Any:
    """A JSON file read and checked against `model` (`read_json`, then `validated`)."""
    return validated(model, read_json(path), path)


def describe_validation_error(exc: Any) -> str:
    """A pydantic ValidationError as one line: its first error (field path, message, the value found), and how many more."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    msg = str(first["ctx"]["error"]) if first["type"] == "value_error" and "error" in first.get("ctx", {}) else first["msg"]
    found = first.get("input")
    if first["type"] not in ("missing", "value_error") and not isinstance(found, (dict, list)):
        msg += f" (found {json.dumps(found, default=str)[:60]})"
    loc = ".".join(str(x) for x in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"field '{loc}': {msg}" if loc else msg) + more


def _json_kind(obj: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class FolderLock:
    """A lock file taken without waiting: exclusive for one writer, or shared (the ranks of one extract).

    `probekit.outputs` locks every output folder with it. The lock file is
    removed by its last holder on release; a process that locked a file just
    removed this way notices (the path no longer names the file it locked) and
    locks the new one, so two holders never hold different files. Where the OS
    has no shared lock (Windows) a shared hold takes no lock, as before locks existed.
    """

    def __init__(self, path: str | os.PathLike, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    def acquire(self, holder: dict) -> bool:
        """Take the lock; False when another process holds it. `holder` is written into the lock file for the others."""
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                got = _os_lock(fd, exclusive=not self.shared)
            except BaseException:
                os.close(fd)
                raise
            if not got:
                os.close(fd)
                return False
            if _same_file(fd, self.path):
                self._fd = fd
                self._write_holder(holder)
                return True
            os.close(fd)  # its holder removed it as it released it: lock the file that is there now
        return False

    def make_exclusive(self) -> bool:
        """Turn a shared hold into an exclusive one; False when another process holds the lock too."""
        if self._fd is None or not self.shared:
            return True
        if not _os_lock(self._fd, exclusive=True):
            _os_lock(self._fd, exclusive=False)  # the conversion may have dropped the shared hold
            return False
        self.shared = False
        return True

    def _write_holder(self, holder: dict) -> None:
        data = json.dumps(holder).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, data)
        except OSError:
            pass  # the lock is held; only the message of a refused writer gets vaguer

    def holder(self) -> dict | None:
        """What the process holding the lock wrote about itself (None when unreadable)."""
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return obj if isinstance(obj, dict) else None

    def release(self) -> None:
        """Release the lock; the last holder removes the lock file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if (not self.shared or _os_lock(fd, exclusive=True)) and _same_file(fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # Windows cannot remove an open file: it stays, unlocked, for the next holder
        finally:
            os.close(fd)

    def __del__(self) -> None:  # a claim dropped without release (a script): the lock ends with the object
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _os_lock(fd: int, exclusive: bool) -> bool:
    """Lock open file `fd` without waiting; False when another process holds a conflicting lock."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    if msvcrt is not None and exclusive:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
