"""Atomic file output and line-checked JSONL input.

Outputs are written to a temporary name in the destination folder and renamed
into place only when complete, so a crash never leaves a half-written file
that a later run could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from probekit.errors import ProbekitError, where
from probekit.outputs import apply_umask


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it onto `dest` on success.

    On any exception the temporary file is removed and `dest` is untouched.
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
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_jsonl(dest: str | os.PathLike, records: Iterator[dict] | list[dict]) -> int:
    """Write records atomically, one JSON object per line; return the count."""
    n = 0
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n")
            n += 1
    return n


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays end up in metrics; write them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def open_text(path: str | os.PathLike):
    """Open a text file, transparently decompressing `.gz`."""
    path = Path(path)
    if not path.exists():
        raise ProbekitError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line; bad JSON is a ProbekitError."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProbekitError(f"{where(path, lineno)}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ProbekitError(f"{where(path, lineno)}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_json(path: str | os.PathLike) -> Any:
    with open_text(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as exc:
            raise ProbekitError(f"{path}: malformed JSON ({exc.msg})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
