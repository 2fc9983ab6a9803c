"""The paper's out-of-distribution math sets as prompts with numeric gold answers.

The official code (vaskarnathscale/goal-conditioned-rm, `examples/eval_rm.py --benchmarks gsm8k math gsm-hard
mawps asdiv algebra222 svamp`) scores NVIDIA's OpenMath test predictions, whose problems NeMo-Skills builds from
these very files (`nemo_skills/dataset/<name>/prepare.py`): PAL's gsm-hard (`gsmhardv2.jsonl`), SVAMP's
`SVAMP.json`, ASDiv's `ASDiv.xml`, MAWPS's four PAL/ToRA subsets (addsub, singleeq, singleop, multiarith) and
algebra222's CSV. Each adapter reads its set's own format (as `probekit data fetch` places it) and gives
`Prompt`s (id = the set's own record id, prompt = the question as NeMo-Skills joins it, gold = the numeric
answer) that `probekit generate` samples and grades.

Every gold answer must be a number: ASDiv has 138 answers that are not (names, times, "Yes", two answers at
once); they are skipped and counted under a reason, never dropped silently. Any other malformed record stops
with one line naming the file and the record.
"""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

from probekit.data.gsm8k import normalize_answer
from probekit.data.prompts import Prompt
from probekit.errors import ProbekitError, where
from probekit.io import iter_jsonl, open_text, read_json

MAWPS_SUBSETS = ("addsub", "singleeq", "singleop", "multiarith")


@dataclass
class OodProblems:
    """The problems of one set, and how many records were skipped for which reason (e.g. a non-numeric answer)."""

    name: str
    prompts: list[Prompt]
    skipped: Counter = field(default_factory=Counter)

    def to_json(self) -> dict:
        return {"name": self.name, "problems": len(self.prompts), "skipped": dict(self.skipped)}


# A record as an adapter sees it: (location for errors, source id, question, raw answer).
Record = tuple[str, str, str, object]


def numeric_gold(value: object, loc: str) -> str | None:
    """The gold answer's canonical text when it is a number ("9.0" -> "9"), None when it is text that is not one.

    A JSON number or a numeric string is kept; a boolean, an object, a non-finite number or an empty answer
    is a malformed record (an error naming `loc`), not a skip.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProbekitError(f"{loc}: the answer must be a number or text, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProbekitError(f"{loc}: the answer is not a finite number ({value})")
    text = normalize_answer(str(value))
    if text is None:
        raise ProbekitError(f"{loc}: empty answer")
    try:
        number = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return normalize_answer(str(int(number)) if number.denominator == 1 else text)


def _text(value: object, loc: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProbekitError(f"{loc}: missing, empty or non-string field '{name}'")
    return value.strip()


def _jsonl_records(path: Path, prefix: str = "") -> Iterator[Record]:
    """PAL's format (gsm-hard, MAWPS): one {"input", "target"} per line; the id is the line's index."""
    for index, (lineno, obj) in enumerate(iter_jsonl(path)):
        loc = where(path, lineno)
        if "target" not in obj:
            raise ProbekitError(f"{loc}: missing field 'target'")
        yield loc, f"{prefix}{index}", _text(obj.get("input"), loc, "input"), obj["target"]


def _svamp_records(path: Path) -> Iterator[Record]:
    """SVAMP.json: one JSON array of {"ID", "Body", "Question", "Answer", ...}; NeMo-Skills' join of Body and Question."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ProbekitError(f"{path}: expected a JSON array of problems, got {type(data).__name__}")
    for index, obj in enumerate(data):
        loc = f"{path}: record {index}"
        if not isinstance(obj, dict):
            raise ProbekitError(f"{loc}: expected an object, got {type(obj).__name__}")
        sid = _text(obj.get("ID"), loc, "ID")
        loc = f"{loc} (ID {sid})"
        body, question = _text(obj.get("Body"), loc, "Body"), _text(obj.get("Question"), loc, "Question")
        if body[-1].isalpha():  # NeMo-Skills' fix: some bodies lack their full stop
            body += "."
        if "Answer" not in obj:
            raise ProbekitError(f"{loc}: missing field 'Answer'")
        yield loc, sid, f"{body} {question}", obj["Answer"]


def _asdiv_records(path: Path) -> Iterator[Record]:
    """ASDiv.xml: <Problem ID=...><Body/><Question/><Answer>9 (apples)</Answer>; the unit in brackets is dropped."""
    try:
        with open_text(path) as fh:
            root = ET.parse(fh).getroot()
    except ET.ParseError as exc:
        raise ProbekitError(f"{path}: malformed XML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbekitError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    for index, problem in enumerate(root.iter("Problem")):
        loc = f"{path}: problem {index}"
        sid = _text(problem.get("ID"), loc, "ID")
        loc = f"{path}: problem {index} (ID {sid})"
        body, question, answer = (_text(getattr(problem.find(tag), "text", None), loc, tag) for tag in ("Body", "Question", "Answer"))
        yield loc, sid, f"{body} {question}", answer.split("(")[0].strip() or answer


def _algebra222_records(path: Path) -> Iterator[Record]:
    """algebra222.csv: columns question, final_answer, section, source; the id is the row's index."""
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"question", "final_answer"} <= set(reader.fieldnames):
                raise ProbekitError(f"{path}: expected a CSV with columns 'question' and 'final_answer'")
            for index, row in enumerate(reader):
                loc = where(path, reader.line_num)
                yield loc, str(index), _text(row.get("question"), loc, "question"), _text(row.get("final_answer"), loc, "final_answer")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ProbekitError(f"{path}: cannot read as CSV ({exc})") from None


@dataclass(frozen=True)
class OodFile:
    """One file of a set: its path in the data-dir layout (where `probekit data fetch NAME` places it) and its reader."""

    file: str
    read: Callable[[Path], Iterator[Record]]


def _mawps_reader(subset: str) -> Callable[[Path], Iterator[Record]]:
    return lambda path: _jsonl_records(path, prefix=f"{subset}-")


OOD_SETS: dict[str, tuple[OodFile, ...]] = {
    "gsm-hard": (OodFile("gsm_hard/gsmhardv2.jsonl", _jsonl_records),),
    "svamp": (OodFile("svamp/SVAMP.json", _svamp_records),),
    "asdiv": (OodFile("asdiv/ASDiv.xml", _asdiv_records),),
    "mawps": tuple(OodFile(f"mawps/{s}.jsonl", _mawps_reader(s)) for s in MAWPS_SUBSETS),
    "algebra222": (OodFile("algebra222/algebra222.csv", _algebra222_records),),
}


def ood_problems(name: str, data_dir: str | Path) -> OodProblems:
    """Every problem of set `name` under `data_dir` as a Prompt `{name}-{source id}` with a numeric gold answer.

    A record whose answer is not a number is skipped and counted (`skipped["non-numeric answer"]`); a malformed
    record, a missing file or a duplicate id is a ProbekitError naming the file and the record.
    """
    if name not in OOD_SETS:
        raise ProbekitError(f"unknown OOD set {name!r}; choose from {', '.join(OOD_SETS)}")
    out = OodProblems(name, [])
    seen: dict[str, str] = {}
    for part in OOD_SETS[name]:
        for loc, sid, question, answer in part.read(Path(data_dir) / part.file):
            gold = numeric_gold(answer, loc)
            if gold is None:
                out.skipped["non-numeric answer"] += 1
                continue
            pid = f"{name}-{sid}"
            if pid in seen:
                raise ProbekitError(f"{loc}: duplicate id '{sid}' (first at {seen[pid]})")
            seen[pid] = loc
            out.prompts.append(Prompt(pid, question, gold))
    if not out.prompts:
        raise ProbekitError(f"{Path(data_dir) / OOD_SETS[name][0].file}: no problem with a numeric answer")
    return out
