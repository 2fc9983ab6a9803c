"""The trajectory and pair record formats, with line-checked readers.

A *trajectory* is one prompt + completion; trajectories answering the same
prompt share a `group`. A *pair* names two trajectories of one group, the
chosen (preferred) and the rejected one, and may carry a `margin` (how much
the chosen must win by in the Bradley-Terry loss: TRL's margin column, the
official goal-conditioned-rm code's `--margin_loss`; 0 where absent). Both formats are documented in
`data/README.md`; these readers enforce it so that a bad record fails with
the file and line, never later inside a forward pass.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np

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
    margin: float | None = None  # how much `chosen` is preferred, where the data says (TRL's preference format)

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"chosen": self.chosen, "rejected": self.rejected}
        return rec if self.margin is None else {**rec, "margin": self.margin}


def scalar_text(value: object, loc: str, name: str) -> str | None:
    """A JSON string or number as text (None for null or absent): an answer or a gold answer. An object, a list or a
    boolean is refused, naming `loc` and `name`: its text ("{'value': 5}", "True") would never equal an answer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProbekitError(f"{loc}: {name} must be a string or number, got {type(value).__name__} {_short(value)}")
    return str(value)


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_trajectory(t: Trajectory, loc: str) -> Trajectory:
    """Refuse a trajectory the reader would refuse: an empty completion, a label other than 0/1, an `error_char`
    outside the completion, a NUL character in a field a store keeps as an HDF5 string (which cannot hold one).

    The one check of a trajectory's values: the reader makes it on each record it parses and every `probekit data`
    adapter on each trajectory it builds (refusing its input's `file:line`), so no adapter writes what the reader
    refuses. (Strings that are not valid text are `probekit.io.check_text`'s, which every JSONL writer makes.)
    """
    if not t.completion.strip():
        raise ProbekitError(f"{loc}: empty completion (trajectory '{t.id}')")
    if t.label not in (None, 0, 1):
        raise ProbekitError(f"{loc}: field 'label' must be 0, 1 or absent, got {t.label!r}")
    for key in STORED_STRING_FIELDS:
        value = getattr(t, key)
        if value is not None and "\x00" in value:
            raise ProbekitError(f"{loc}: field '{key}' contains a NUL character")
    e = t.error_char
    # bool is an int in Python: `true` would silently become offset 1.
    if e is not None and (isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < len(t.completion)):
        raise ProbekitError(f"{loc}: field 'error_char' must be a character offset (an integer) inside the completion")
    return t


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
    label = obj.get("label")
    answer = scalar_text(obj.get("answer"), loc, "field 'answer'")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise ProbekitError(f"{loc}: field 'meta' must be an object")
    extra = {k: v for k, v in obj.items() if k not in TRAJECTORY_FIELDS}
    return check_trajectory(Trajectory(
        id=str(obj["id"]),
        group=str(obj["group"]),
        prompt=obj["prompt"],
        completion=obj["completion"],
        label=int(label) if isinstance(label, bool) else label,
        answer=answer,
        error_char=obj.get("error_char"),
        meta={**meta, **extra},
    ), loc)


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
    return require_records(out, path, noun), skipped


def require_records(records: list[R], path: str | Path, noun: str = "records", skipped: Counter | None = None) -> list[R]:
    """`records`, unless there are none: a file (a reader's or an adapter's input) that yields no record is an error,
    not an empty output; `skipped` (reason -> count) says why, where the caller counted what it left out."""
    if not records:
        reasons = ", ".join(f"{n} {reason}" for reason, n in (skipped or {}).items() if n)
        raise ProbekitError(f"{path}: no valid {noun}" + (f" (skipped: {reasons})" if reasons else ""))
    return records


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
        pairs.append(Pair(chosen, rejected, pair_margin(obj, loc)))
    return pairs


def pair_margin(obj: dict, loc: str) -> float | None:
    """A pair record's `margin`: a finite number, or None when absent or null (a boolean or text is refused)."""
    value = obj.get("margin")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProbekitError(f"{loc}: field 'margin' must be a finite number, got {_short(value)}")
    return float(value)


def read_pair_margins(path: str | Path) -> np.ndarray | None:
    """Each line's margin of a pairs JSONL file (0 where a line has none), float64 [n_lines]; None when no line has one
    or the file is absent, so a store without margins trains exactly as before margins existed."""
    if not Path(path).exists():
        return None
    margins = [pair_margin(obj, where(path, lineno)) for lineno, obj in iter_jsonl(path)]
    if all(m is None for m in margins):
        return None
    return np.asarray([0.0 if m is None else m for m in margins], dtype=np.float64)


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
    return write_jsonl(path, (p.to_record() for p in pairs))
