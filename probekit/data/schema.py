"""The trajectory and pair record formats, with line-checked readers.

A *trajectory* is one prompt + completion; trajectories answering the same
prompt share a `group`. A *pair* names two trajectories of one group, the
chosen (preferred) and the rejected one. Both formats are documented in
`data/README.md`; these readers enforce it so that a bad record fails with
the file and line, never later inside a forward pass.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from probekit.errors import ProbekitError, where
from probekit.io import iter_jsonl, write_jsonl
from probekit.outputs import check_set

R = TypeVar("R")
TRAJECTORY_FIELDS = ("id", "group", "prompt", "completion", "label", "answer", "error_char", "meta")
STORED_STRING_FIELDS = ("id", "group", "answer")  # kept as strings in every store shard


@dataclass(frozen=True)
class Trajectory:
    id: str
    group: str
    prompt: str
    completion: str
    label: int | None = None  # 1 correct / preferred, 0 incorrect / dispreferred
    answer: str | None = None  # the final answer that majority voting counts
    error_char: int | None = None  # character offset in `completion` of the first wrong character
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        return {k: v for k, v in rec.items() if v is not None and not (k == "meta" and not v)}


@dataclass(frozen=True)
class Pair:
    chosen: str
    rejected: str


def _refuse_nul(obj: dict, loc: str) -> None:
    """Refuse NUL in the fields a store keeps as HDF5 strings, which cannot hold it.

    Caught here, at read time, rather than when the first shard is written after
    a whole forward pass.
    """
    for key in STORED_STRING_FIELDS:
        value = obj.get(key)
        if isinstance(value, str) and "\x00" in value:
            raise ProbekitError(f"{loc}: field '{key}' contains a NUL character")


def _parse_trajectory(obj: dict, loc: str) -> Trajectory:
    for key in ("id", "group", "prompt", "completion"):
        if key not in obj or obj[key] is None:
            raise ProbekitError(f"{loc}: missing field '{key}'")
    for key in ("id", "group"):
        if not isinstance(obj[key], (str, int)) or isinstance(obj[key], bool):
            raise ProbekitError(f"{loc}: field '{key}' must be a string or integer")
    for key in ("prompt", "completion"):
        if not isinstance(obj[key], str):
            raise ProbekitError(f"{loc}: field '{key}' must be a string")
    if not obj["completion"].strip():
        raise ProbekitError(f"{loc}: empty completion (trajectory '{obj['id']}')")
    label = obj.get("label")
    if label is not None:
        if isinstance(label, bool):
            label = int(label)
        if label not in (0, 1):
            raise ProbekitError(f"{loc}: field 'label' must be 0, 1 or absent, got {label!r}")
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise ProbekitError(f"{loc}: field 'answer' must be a string or number")
    _refuse_nul(obj, loc)
    error_char = obj.get("error_char")
    if error_char is not None:
        # bool is an int in Python: `true` would silently become offset 1.
        if isinstance(error_char, bool) or not isinstance(error_char, int) or not 0 <= error_char < len(obj["completion"]):
            raise ProbekitError(f"{loc}: field 'error_char' must be a character offset (an integer) inside the completion")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise ProbekitError(f"{loc}: field 'meta' must be an object")
    extra = {k: v for k, v in obj.items() if k not in TRAJECTORY_FIELDS}
    return Trajectory(
        id=str(obj["id"]),
        group=str(obj["group"]),
        prompt=obj["prompt"],
        completion=obj["completion"],
        label=label,
        answer=None if answer is None else str(answer),
        error_char=error_char,
        meta={**meta, **extra},
    )


def read_trajectories(path: str | Path, skip_invalid: bool = False) -> tuple[list[Trajectory], int]:
    """Read a trajectories JSONL file.

    Returns the trajectories and the number of invalid records skipped (always 0
    unless `skip_invalid`): lines that are not UTF-8 or not JSON count as invalid
    records too. Duplicate ids are an error either way, since every later stage
    addresses trajectories by id.
    """
    return read_records(path, _parse_trajectory, skip_invalid, "trajectories")


def read_records(path: str | Path, parse: Callable[[dict, str], R], skip_invalid: bool, noun: str) -> tuple[list[R], int]:
    """Records of a JSONL file parsed by `parse(obj, "file:line")`, with unique `.id`s.

    Returns the records and the number of invalid ones skipped (lines that are
    not UTF-8 or not JSON count too); without `skip_invalid` the first invalid
    one raises. Duplicate ids are an error either way, and so is a file with
    no valid record. A file in a folder whose set of files is incomplete (an
    interrupted write left files of two runs) is refused (`probekit.outputs.check_set`).
    """
    check_set(path)
    out: list[R] = []
    seen: dict[str, int] = {}
    skipped = 0

    def skip(_exc: ProbekitError) -> None:
        nonlocal skipped
        skipped += 1

    for lineno, obj in iter_jsonl(path, on_invalid=skip if skip_invalid else None):
        loc = where(path, lineno)
        try:
            record = parse(obj, loc)
        except ProbekitError as exc:
            if not skip_invalid:
                raise
            skip(exc)
            continue
        if record.id in seen:
            raise ProbekitError(f"{loc}: duplicate id '{record.id}' (first seen on line {seen[record.id]})")
        seen[record.id] = lineno
        out.append(record)
    if not out:
        raise ProbekitError(f"{path}: no valid {noun}")
    return out, skipped


def read_pairs(path: str | Path, trajectories: Iterable[Trajectory]) -> list[Pair]:
    """Read a pairs JSONL file ({"chosen": id, "rejected": id}) and check it against the trajectories."""
    check_set(path)
    by_id = {t.id: t for t in trajectories}
    pairs: list[Pair] = []
    for lineno, obj in iter_jsonl(path):
        loc = where(path, lineno)
        for key in ("chosen", "rejected"):
            if key not in obj:
                raise ProbekitError(f"{loc}: missing field '{key}'")
        chosen, rejected = str(obj["chosen"]), str(obj["rejected"])
        for tid in (chosen, rejected):
            if tid not in by_id:
                raise ProbekitError(f"{loc}: pair refers to unknown trajectory id '{tid}'")
        if chosen == rejected:
            raise ProbekitError(f"{loc}: a pair needs two different trajectories, got '{chosen}' twice")
        if by_id[chosen].group != by_id[rejected].group:
            raise ProbekitError(f"{loc}: pair '{chosen}'/'{rejected}' spans two groups")
        pairs.append(Pair(chosen, rejected))
    return pairs


def derive_pairs(trajectories: Iterable[Trajectory]) -> list[Pair]:
    """Every (label 1, label 0) combination within each group, in input order."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        if t.label is not None:
            groups.setdefault(t.group, []).append(t)
    pairs = []
    for members in groups.values():
        good = [t for t in members if t.label == 1]
        bad = [t for t in members if t.label == 0]
        pairs.extend(Pair(g.id, b.id) for g, b in itertools.product(good, bad))
    return pairs


def write_trajectories(path: str | Path, trajectories: Iterable[Trajectory]) -> int:
    return write_jsonl(path, (t.to_record() for t in trajectories))


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> int:
    return write_jsonl(path, ({"chosen": p.chosen, "rejected": p.rejected} for p in pairs))
