"""Output folders that probekit owns, and the rules that keep a user's files safe.

Every command that writes a folder claims it first (`claim_output`):

* the folder gets a marker file, `.probekit-output.json`, naming the command
  and every file probekit wrote there; a folder is "ours" only through this
  marker (or, for folders made before markers existed, the store manifest or
  checkpoint config with probekit's own `format` field), never through a
  generic file name such as `config.json`;
* an existing folder that is not an output of the same command is refused
  (exit 2) unless the user passes `--overwrite`; even then only probekit's own
  files are replaced, and a file of the user's that has the name of one of the
  command's outputs makes the command refuse outright;
* an output folder may not contain the command's inputs (a data file, a store,
  a checkpoint), so an output name can never replace an input;
* writability is checked here, before any work, so a read-only folder fails in
  a second rather than after an hour of training.

The marker is read and updated by one process at a time per folder; commands
that write one folder from several processes (extract's `--shard i/N`) share
one marker written identically by each.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from probekit.errors import ProbekitError
from probekit.io import write_json

MARKER = ".probekit-output.json"
MARKER_FORMAT = "probekit-output"

# Folders written before markers existed are recognised by probekit's own format field.
_LEGACY = {"probekit-store": ("extract", "manifest.json"), "probekit-probe": ("fit", "config.json")}


@dataclass
class OutputDir:
    """A claimed output folder: `path` is ours to write `files` into."""

    path: Path
    command: str
    owned: set[str] = field(default_factory=set)  # file and folder names probekit wrote here
    created: bool = False  # this claim made the folder
    marked: bool = False  # this claim wrote the folder's first marker

    def release_if_unused(self) -> None:
        """Undo the claim of a command that failed before writing anything: a folder it made goes again.

        So a run refused after the claim (no pairs, a bad split file) leaves no
        marker-only folder behind, and a folder that held an earlier run's
        marker keeps it as it was.
        """
        if self.owned or not self.marked:
            return
        try:
            (self.path / MARKER).unlink(missing_ok=True)
            if self.created:
                self.path.rmdir()
        except OSError:
            pass  # something else appeared there meanwhile: leave it

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.release_if_unused()

    def file(self, name: str) -> Path:
        """The path of output `name`, recorded in the marker as ours before it is written."""
        self.record(name)
        return self.path / name

    def record(self, *names: str) -> None:
        new = {n for n in names if n not in self.owned}
        if new:
            self.owned |= new
            _write_marker(self.path, self.command, self.owned)


def read_marker(path: Path) -> dict | None:
    """The marker of folder `path` ({"command", "files"}), or None when probekit does not own it."""
    marker = path / MARKER
    if marker.is_file():
        try:
            obj = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if isinstance(obj, dict) and obj.get("format") == MARKER_FORMAT and isinstance(obj.get("command"), str):
            return {"command": obj["command"], "files": set(map(str, obj.get("files") or []))}
        return None
    for fmt, (command, name) in _LEGACY.items():
        try:
            obj = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("format") == fmt:
            return {"command": command, "files": {p.name for p in path.iterdir()}}
    return None


def _write_marker(path: Path, command: str, files: Iterable[str]) -> None:
    write_json(path / MARKER, {"format": MARKER_FORMAT, "command": command, "files": sorted(set(files) - {MARKER}),
                               "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _is_temporary_of(name: str, owned: set[str]) -> bool:
    """True for the temporary file of an owned output (`probekit.io.atomic_path` names it `.{name}.*.tmp`).

    Another process writing the same folder (extract's ranks) has such files
    open while this one claims the folder; they are probekit's, not the user's.
    """
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{o}.") for o in owned)


def check_not_input(out: Path, inputs: Iterable[str | os.PathLike | None], option: str = "--out") -> None:
    """Refuse an output folder that is, or contains, one of the inputs (files or folders)."""
    out_r = Path(out).resolve()
    for item in inputs:
        if item is None:
            continue
        p = Path(item).resolve()
        if p == out_r or _inside(p, out_r):
            raise ProbekitError(f"{option} {out}: this folder holds the input {item}; choose an output folder that does not contain the inputs")


def claim_output(
    out: str | os.PathLike,
    command: str,
    outputs: Iterable[str] = (),
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str = "--out",
) -> OutputDir:
    """Check and prepare `out` as the output folder of `command`; see the module docstring.

    `outputs` are the names the command will write (files or subfolders); they
    are checked against the user's files before anything is written.
    """
    out = Path(out)
    outputs = list(outputs)
    check_not_input(out, inputs, option)
    if out.exists() and not out.is_dir():
        raise ProbekitError(f"{option} {out}: exists and is a file, not a folder")
    marker = read_marker(out) if out.is_dir() else None
    existing = {p.name for p in out.iterdir()} - {MARKER} if out.is_dir() else set()
    # Another process of the same run (extract's ranks) may be writing the marker or an output right now.
    ours = set(outputs) | {MARKER} | (marker["files"] if marker is not None else set())
    existing = {name for name in existing if not _is_temporary_of(name, ours)}
    owned: set[str] = set()
    if marker is not None:
        owned = marker["files"] & existing
        if marker["command"] != command and not overwrite:
            raise ProbekitError(
                f"{option} {out}: holds the output of `probekit {marker['command']}`, not of `probekit {command}`; "
                "choose another folder or pass --overwrite to replace probekit's files there"
            )
    foreign = sorted(existing - owned)
    same_command = marker is not None and marker["command"] == command
    if foreign and not overwrite and not same_command:  # neighbours accepted once (--overwrite) stay accepted
        raise ProbekitError(
            f"{option} {out}: folder is not empty and is not a probekit {command} output (it holds {foreign[0]!r}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); choose an empty or new folder, "
            "or pass --overwrite to write beside those files (they are never replaced)"
        )
    clash = sorted(set(outputs) & set(foreign))
    if clash:
        raise ProbekitError(
            f"{option} {out}: would replace {out / clash[0]}, which probekit did not write; "
            "choose another folder (probekit never replaces a file it did not create)"
        )
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_marker(out, command, owned)
    except OSError as exc:
        raise ProbekitError(f"{option} {out}: cannot write there ({exc.strerror or exc})") from None
    return OutputDir(out, command, owned, created, marked=marker is None)
