"""Output folders that probekit owns, and the rules that keep a user's files safe.

Every command that writes a folder claims it first and holds the claim until
it finishes (`with claim_output(...) as out:`):

* *one writer at a time.* The claim takes the folder's lock
  (`.probekit-output.lock`, an operating-system lock that ends with the process
  however it ends) without waiting; a second writer is refused with one line
  naming the holder (its command and pid, which the holder writes into the lock
  file). The ranks of one `extract` share the lock (`shared=True`) and divide
  the shards by their own per-shard locks; a rank that would replace another
  store takes it for itself (`OutputDir.exclusive`).
* *ownership.* The folder gets a marker file, `.probekit-output.json`, naming
  the command and every file probekit wrote there; a folder is "ours" only
  through this marker (or, for folders made before markers existed, the store
  manifest or checkpoint config with probekit's own `format` field), never
  through a generic file name such as `config.json`. An existing folder that is
  not an output of the same command is refused unless the user passes
  `--overwrite`; even then only probekit's own files are replaced, and a file
  of the user's that has the name of one of the command's outputs makes the
  command refuse outright.
* *inputs.* An output folder may not be, contain, or lie inside one of the
  command's inputs (a data file, a store, a checkpoint and the store it was
  trained on, a goal or filter folder), so an output can never replace an input.
* *writability* is checked here, before any work, so a read-only folder fails
  in a second rather than after an hour of training; a claim that ends in an
  error before the command wrote anything leaves no marker-only folder behind.
* *sets.* Files that belong together are written as one set
  (`with out.commit_set(): ...`): inside it `out.file(name)` is a path in the
  folder's staging area (`.probekit-staging/`), so nothing in place changes
  while they are written. Then the marker says `committing` and lists the new
  set, the previous files are moved aside, the new ones renamed into place
  (the format's record file last), and the marker recording the completed set
  (every file and its size) is written last. A failure before that leaves the
  previous set untouched; a failure during the renames puts the previous set
  back; a crash during them is finished by the next claim of the folder. A
  reader (`check_set`) refuses a folder whose marker says a set is being
  committed, or whose files do not have the sizes its set recorded (files of
  two sets).
* *resumable work.* Commands that resume (`generate`, `steer`) keep their
  unfinished work in the staging area (`claim_output(resume=True)`,
  `OutputDir.resume_key`); every other claim discards what a failed run left there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from probekit.errors import ProbekitError
from probekit.io import FolderLock, write_json

MARKER = ".probekit-output.json"
MARKER_FORMAT = "probekit-output"
LOCK = ".probekit-output.lock"
STAGING = ".probekit-staging"
RESERVED = frozenset({MARKER, LOCK, STAGING})  # probekit's own bookkeeping in every output folder
_ASIDE = ".replaced"  # in the staging area: the previous set's files while a commit is under way
_STAGED_BY = ".staged-by.json"  # in the staging area: which command's resumable work it holds, and its key

# Folders written before markers existed are recognised by probekit's own format field.
_LEGACY = {"probekit-store": ("extract", "manifest.json"), "probekit-probe": ("fit", "config.json")}


# ---- the folder lock ----------------------------------------------------------------------------------------------
def _holder_record(command: str) -> dict:
    return {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]][:40] if sys.argv else []}


def _busy(option: str, out: Path, holder: dict | None) -> ProbekitError:
    if not holder:
        who = "another probekit process"
    else:
        here = holder.get("host") in (None, socket.gethostname())
        who = (f"`probekit {holder.get('command')}` (pid {holder.get('pid')}{'' if here else ' on ' + str(holder.get('host'))}, "
               f"since {holder.get('since')})")
    return ProbekitError(f"{option} {out}: {who} is writing this folder; wait until it finishes, or choose another folder")


# ---- the marker ---------------------------------------------------------------------------------------------------
def _read_marker_object(path: Path) -> dict | None:
    try:
        obj = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(obj, dict) and obj.get("format") == MARKER_FORMAT and isinstance(obj.get("command"), str):
        return obj
    return None


def _set_record(obj: dict | None) -> dict | None:
    record = (obj or {}).get("set")
    return record if isinstance(record, dict) and isinstance(record.get("state"), str) else None


def read_marker(path: Path) -> dict | None:
    """The marker of folder `path` ({"command", "files", "set"}), or None when probekit does not own it."""
    path = Path(path)
    if (path / MARKER).is_file():
        obj = _read_marker_object(path)
        if obj is None:
            return None
        return {"command": obj["command"], "files": set(map(str, obj.get("files") or [])), "set": _set_record(obj)}
    for fmt, (command, name) in _LEGACY.items():
        try:
            obj = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict) and obj.get("format") == fmt:
            return {"command": command, "files": {p.name for p in path.iterdir()}, "set": None}
    return None


def write_marker(path: Path, command: str, files: Iterable[str], set_record: dict | None = None) -> None:
    """Write the marker of folder `path` (the command, the names probekit wrote there, and their set if committed as one)."""
    obj = {"format": MARKER_FORMAT, "command": command, "files": sorted(set(files) - RESERVED),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if set_record is not None:
        obj["set"] = set_record
    write_json(path / MARKER, obj)


def check_set(path: str | os.PathLike) -> None:
    """Refuse to read `path` (a file or folder probekit wrote) unless its folder holds one complete set of files.

    One line, naming the folder: while a set is being committed (or a commit
    was cut short and not finished yet), or when a file of the set no longer
    has the size the set recorded (a file of another run beside it). Folders
    without a recorded set (older outputs, files of the user's) pass.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    obj = _read_marker_object(folder) if (folder / MARKER).is_file() else None
    record = _set_record(obj)
    if record is None:
        return
    command = obj["command"]
    if record["state"] != "complete":
        raise ProbekitError(
            f"{folder}: `probekit {command}` was stopped while it replaced its files here, so they are not one set "
            f"(its marker {MARKER} says '{record['state']}'); re-run that command to finish, or read another folder"
        )
    sizes = record.get("files") if isinstance(record.get("files"), dict) else {}
    for rel, size in sizes.items():
        file = folder / rel
        try:
            now = file.stat().st_size
        except OSError:
            continue  # removed since: what is left is still of one set
        if now != size:
            others = sorted(n for n in sizes if n != rel and "/" not in n)
            raise ProbekitError(
                f"{file}: changed since `probekit {command}` wrote it together with {', '.join(others) or 'the other files'} "
                f"({size} bytes then, {now} now): the files of {folder} are not one set; re-run `probekit {command}` "
                "(or remove its marker if you edited the file on purpose)"
            )


# ---- the claimed folder -------------------------------------------------------------------------------------------
@dataclass
class OutputDir:
    """A claimed output folder: `path` is ours to write `files` into, one writer at a time, until `close()`."""

    path: Path
    command: str
    owned: set[str] = field(default_factory=set)  # file and folder names probekit wrote here
    created: bool = False  # this claim made the folder
    marked: bool = False  # this claim wrote the folder's first marker
    lock: FolderLock | None = None
    set_record: dict | None = None  # the set the marker records (None: none committed as a set)
    option: str = "--out"
    _set: dict[str, None] | None = field(default=None, repr=False)  # names of the set being written, in order

    @property
    def staging(self) -> Path:
        return self.path / STAGING

    # -- writing ---------------------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path to write output `name` to (a file or folder, `a/b` inside a subfolder).

        Inside `commit_set()` it is a temporary path that the commit renames into
        place; outside, the final path, recorded in the marker as ours before it
        is written.
        """
        if self._set is not None:
            self._set.setdefault(name, None)
            (self.staging / name).parent.mkdir(parents=True, exist_ok=True)  # so a plain open() of it works too
            return self.staging / name
        self.record(name.split("/")[0])
        if self.set_record is not None and name in (self.set_record.get("files") or {}):
            self.set_record = None  # written outside a set: the recorded set no longer describes the folder
            write_marker(self.path, self.command, self.owned, None)
        return self.path / name

    def scratch(self, name: str) -> Path:
        """A path in the staging area for work that is not an output (a resumable command's journal); gone after the commit."""
        path = self.staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, *names: str) -> None:
        new = {n for n in names if n not in self.owned}
        if new:
            self.owned |= new
            write_marker(self.path, self.command, self.owned, self.set_record)

    def resume_key(self, key: str) -> bool:
        """True when the staging area holds unfinished work of this command with this `key` (settings); else it is emptied for it."""
        state = self.staging / _STAGED_BY
        try:
            old = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("command") == self.command and old.get("key") == key:
            return True
        _remove(self.staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        write_json(state, {"command": self.command, "key": key})
        return False

    @contextlib.contextmanager
    def commit_set(self, last: Iterable[str] = (), keep: bool = False) -> Iterator["OutputDir"]:
        """Write one set of outputs: `file(name)` gives temporary paths, and on success they replace the previous set together.

        `last` names the files renamed last (a format's record file: a checkpoint's
        config.json, a store's manifest.json). A name given to `file()` but never
        written removes the previous file of that name (so no earlier plot stays
        beside a checkpoint that has none). On an error nothing in place changes;
        with `keep` the staged work stays for a resuming re-run.
        """
        if self._set is not None:
            raise RuntimeError("commit_set() does not nest")
        self._set = {}
        try:
            yield self
            names = list(self._set)
            self._set = None
            self._commit(names, tuple(last))
        except ProbekitError as exc:  # a staged file is named as the output it was to become
            if not keep:
                _remove(self.staging)
            raise ProbekitError(str(exc).replace(f"{self.staging}{os.sep}", f"{self.path}{os.sep}")) from None
        except BaseException:
            if not keep:
                _remove(self.staging)
            raise
        finally:
            self._set = None

    def _members(self, names: list[str], last: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """(files to rename into place, files to remove), relative paths, record files last."""
        incoming: list[str] = []
        removing: list[str] = []
        for name in names:
            src, dest = self.staging / name, self.path / name
            if src.is_dir():
                staged = sorted(p.relative_to(self.staging).as_posix() for p in src.rglob("*") if p.is_file())
                incoming += staged
                if dest.is_dir():  # the previous folder's own files that this set does not have
                    previous = read_marker(dest)
                    owned = previous["files"] | {MARKER} if previous else set()
                    removing += [f"{name}/{n}" for n in sorted(owned) if (dest / n).is_file() and f"{name}/{n}" not in staged]
            elif src.is_file():
                incoming.append(name)
            elif dest.is_file() and name.split("/")[0] in self.owned:
                removing.append(name)
        order = {name: i for i, name in enumerate(last)}
        incoming.sort(key=lambda rel: order.get(rel, -1))  # stable: the others keep their order
        return incoming, removing

    def _commit(self, names: list[str], last: tuple[str, ...]) -> None:
        incoming, removing = self._members(names, last)
        previous_record, previous_owned = self.set_record, set(self.owned)
        top = {rel.split("/")[0] for rel in incoming}
        gone = {rel for rel in removing if "/" not in rel}
        self.owned = (self.owned | top) - gone
        write_marker(self.path, self.command, self.owned | previous_owned,
                     {"state": "committing", "incoming": incoming, "removing": removing})
        moved: list[tuple[Path, Path]] = []
        placed: list[str] = []
        made: list[Path] = []
        try:
            _move_aside(self.path, self.staging, incoming + removing, moved)
            for rel in incoming:
                dest = self.path / rel
                if not dest.parent.is_dir():
                    dest.parent.mkdir(parents=True)
                    made.append(dest.parent)
                os.replace(self.staging / rel, dest)
                placed.append(rel)
            kept = {rel: size for rel, size in ((previous_record or {}).get("files") or {}).items()
                    if rel not in incoming and rel not in removing and rel.split("/")[0] not in names}
            self.set_record = {"state": "complete", "files": {**kept, **_sizes(self.path, incoming)}}
            write_marker(self.path, self.command, self.owned, self.set_record)
        except BaseException:
            with contextlib.suppress(OSError):  # put the previous set back, as it was
                for rel in reversed(placed):
                    os.replace(self.path / rel, self.staging / rel)
                for dest, aside in reversed(moved):
                    os.replace(aside, dest)
                for folder in reversed(made):
                    folder.rmdir()
                self.owned, self.set_record = previous_owned, previous_record
                write_marker(self.path, self.command, self.owned, self.set_record)
            raise
        _remove(self.staging)

    # -- ending ----------------------------------------------------------------------------------------------------
    def exclusive(self) -> None:
        """Hold the folder alone from now on (an extract rank about to replace the store); refuse while another process holds it."""
        if self.lock is not None and not self.lock.make_exclusive():
            raise _busy(self.option, self.path, self.lock.holder())

    def release_if_unused(self) -> None:
        """Undo the claim of a command that failed before writing anything: a folder it made goes again.

        So a run refused after the claim (no pairs, a bad split file, a model
        that does not load) leaves no marker-only folder behind, and a folder
        that held an earlier run's marker keeps it as it was.
        """
        if not self.marked:
            return
        try:
            left = {p.name for p in self.path.iterdir()} - RESERVED
        except OSError:
            return
        if left:
            return  # something was written (or appeared meanwhile): leave it
        with contextlib.suppress(OSError):
            (self.path / MARKER).unlink(missing_ok=True)
        if (self.staging / _STAGED_BY).is_file():
            return  # an interrupted command's resumable work: the folder stays for the re-run
        _remove(self.staging)
        if self.created:
            if self.lock is not None:
                self.lock.release()
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def close(self, failed: bool = False) -> None:
        """End the claim: release the lock (after `release_if_unused` when the command failed)."""
        if failed:
            self.release_if_unused()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)


def _sizes(folder: Path, rels: Iterable[str]) -> dict[str, int]:
    return {rel: (folder / rel).stat().st_size for rel in rels if (folder / rel).is_file()}


def _move_aside(folder: Path, staging: Path, rels: Iterable[str], moved: list[tuple[Path, Path]]) -> None:
    for rel in rels:
        dest = folder / rel
        if dest.is_file() or dest.is_symlink():
            aside = staging / _ASIDE / rel
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dest, aside)
            moved.append((dest, aside))


def _remove(path: Path) -> None:
    """Remove probekit's staging area (nothing there is the user's)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


def _finish_commit(out: Path, command: str, owned: set[str], record: dict) -> dict | None:
    """Finish a commit that a crash cut short (the marker says `committing`): the staged set was complete, so it goes in."""
    staging = out / STAGING
    incoming = [str(r) for r in record.get("incoming") or []]
    removing = [str(r) for r in record.get("removing") or []]
    missing = [rel for rel in incoming if not (staging / rel).is_file() and not (out / rel).is_file()]
    if missing:
        done = {"state": "incomplete", "missing": missing}
    else:
        _move_aside(out, staging, removing + [rel for rel in incoming if (staging / rel).is_file()], [])
        for rel in incoming:
            if (staging / rel).is_file():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, out / rel)
        done = {"state": "complete", "files": _sizes(out, incoming)}
        owned = (owned | {rel.split("/")[0] for rel in incoming}) - {rel for rel in removing if "/" not in rel}
    write_marker(out, command, owned, done)
    if not missing:
        _remove(staging)
    return done


# ---- claiming -----------------------------------------------------------------------------------------------------
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


def checkpoint_inputs(ckpt) -> list:
    """What a command reading checkpoint `ckpt` must not write over: its folder and the store it was trained on."""
    if ckpt is None:
        return []
    store = (getattr(ckpt, "config", None) or {}).get("store")
    return [ckpt.path, store.get("path") if isinstance(store, dict) else None]


def check_not_input(out: Path, inputs: Iterable[str | os.PathLike | None], option: str = "--out") -> None:
    """Refuse an output folder that is, contains, or lies inside one of the inputs (files or folders)."""
    out_r = Path(out).resolve()
    for item in inputs:
        if item is None or str(item) == "":
            continue
        p = Path(item).resolve()
        if p == out_r or _inside(p, out_r):
            raise ProbekitError(f"{option} {out}: this folder holds the input {item}; choose an output folder that does not contain the inputs")
        if p.is_dir() and _inside(out_r, p):
            raise ProbekitError(f"{option} {out}: this folder lies inside the input {item}; choose an output folder outside the inputs")


def _check_folder(out: Path, command: str, outputs: list[str], overwrite: bool, option: str) -> tuple[dict | None, set[str]]:
    """(marker, names probekit owns there) of an existing folder this command may write; ProbekitError otherwise."""
    if not out.is_dir():
        return None, set()
    marker = read_marker(out)
    existing = {p.name for p in out.iterdir()} - RESERVED
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
    return marker, owned


def _check_path(out: Path, option: str) -> None:
    if out.is_symlink() and not out.exists():
        raise ProbekitError(f"{option} {out}: is a symbolic link to {os.readlink(out)}, which does not exist; "
                            "create that folder or choose another --out")
    if out.exists() and not out.is_dir():
        raise ProbekitError(f"{option} {out}: exists and is a file, not a folder")
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ProbekitError(f"{option} {out}: {parent} is {'a dangling symbolic link' if parent.is_symlink() and not parent.exists() else 'a file'}, not a folder")
            break


def claim_output(
    out: str | os.PathLike,
    command: str,
    outputs: Iterable[str] = (),
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str = "--out",
    shared: bool = False,
    resume: bool = False,
) -> OutputDir:
    """Check, lock and prepare `out` as the output folder of `command`; see the module docstring.

    `outputs` are the names the command will write (files or subfolders); they
    are checked against the user's files before anything is written. The claim
    holds the folder's lock until `close()` (use it as a context manager);
    `shared` lets the ranks of one extract hold it together; `resume` keeps
    this command's unfinished work in the staging area.
    """
    out = Path(out)
    outputs = list(outputs)
    check_not_input(out, inputs, option)
    _check_path(out, option)
    _check_folder(out, command, outputs, overwrite, option)  # refuse before touching anything
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProbekitError(f"{option} {out}: cannot write there ({exc.strerror or exc})") from None
    lock = FolderLock(out / LOCK, shared)
    try:
        got = lock.acquire(_holder_record(command))
    except OSError as exc:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise ProbekitError(f"{option} {out}: cannot write there ({exc.strerror or exc})") from None
    if not got:
        raise _busy(option, out, lock.holder())
    claim = OutputDir(out, command, set(), created, marked=created, lock=lock, option=option)
    try:
        marker = read_marker(out)
        if marker is not None and marker["set"] is not None and marker["set"]["state"] == "committing" and not shared:
            _finish_commit(out, marker["command"], marker["files"], marker["set"])
        marker, owned = _check_folder(out, command, outputs, overwrite, option)  # again, now that no other writer can change it
        record = marker["set"] if marker is not None and marker["command"] == command else None
        if not shared and not (resume and _staged_by(out) == command):
            _remove(out / STAGING)  # what a failed run left there
        old = _read_marker_object(out)
        if old is None or (old["command"], sorted(old.get("files") or []), _set_record(old)) != (command, sorted(owned - RESERVED), record):
            write_marker(out, command, owned, record)  # an unchanged marker stays as it was, byte for byte
    except ProbekitError:
        claim.close(failed=True)
        raise
    except OSError as exc:
        claim.close(failed=True)
        raise ProbekitError(f"{option} {out}: cannot write there ({exc.strerror or exc})") from None
    claim.owned, claim.set_record, claim.marked = owned, record, marker is None
    return claim


def _staged_by(out: Path) -> str | None:
    try:
        obj = json.loads((out / STAGING / _STAGED_BY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj.get("command") if isinstance(obj, dict) else None
