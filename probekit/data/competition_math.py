"""MATH (Hendrycks et al. 2021) problems with their gold solutions, as trajectories.

`probekit data fetch math` brings the 500 held-out MATH test problems of
PRM800K (`math/test.jsonl`: one `{"problem", "solution", "answer", "subject",
"level", "unique_id"}` per line); the original MATH files (`{"problem",
"solution", "level", "type"}`) read the same way. A solution states its final
answer as `\\boxed{...}`: that, brace-balanced and in a canonical LaTeX form, is
the trajectory's answer (what votes count), as `A: n` is for GSM8K.
"""

from __future__ import annotations

import re
from pathlib import Path

from probekit.data.gsm8k import split_name
from probekit.data.schema import Trajectory, check_trajectory, require_records
from probekit.errors import ProbekitError, where
from probekit.io import iter_jsonl

BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Spellings that typeset alike, so that votes for "\dfrac{1}{2}" and "\frac{1}{2}" agree.
_SAME = ((r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), (r"\left", ""), (r"\right", ""), (r"\!", ""), (r"\,", ""), ("$", ""))


def normalize_latex(text: str | None) -> str | None:
    """Canonical form of a LaTeX answer: blanks, `$`, thin spaces and \\left/\\right dropped, \\dfrac/\\tfrac as \\frac,
    a trailing full stop removed; None for a missing or empty answer."""
    if text is None:
        return None
    s = text
    for old, new in _SAME:
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    return s or None


def boxed_answer(solution: str) -> str | None:
    """The normalised content of the last `\\boxed{...}` (or `\\fbox{...}`) of a solution; None when there is none
    or its braces never close."""
    starts = [m.end() for m in BOXED.finditer(solution)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(solution)):
        if solution[i] == "{" and solution[i - 1] != "\\":
            depth += 1
        elif solution[i] == "}" and solution[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return normalize_latex(solution[start:i])
    return None


def gold_solutions(path: str | Path) -> list[Trajectory]:
    """One label-1 trajectory per problem: prompt = problem, completion = gold solution, answer = its boxed answer.

    Groups are `math-{split}-{index}` (split from the file name, as for GSM8K). A record
    without a problem, a solution or a boxed answer stops with its file and line.
    """
    split = split_name(path)
    out: list[Trajectory] = []
    for index, (lineno, obj) in enumerate(iter_jsonl(path)):
        loc = where(path, lineno)
        for key in ("problem", "solution"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise ProbekitError(f"{loc}: missing, empty or non-string field '{key}'")
        answer = boxed_answer(obj["solution"])
        if answer is None:
            raise ProbekitError(f"{loc}: the solution has no \\boxed{{...}} answer")
        meta = {k: obj[k] for k in ("unique_id", "subject", "type", "level") if k in obj}
        out.append(check_trajectory(Trajectory(id=f"math-{split}-{index}-gold", group=f"math-{split}-{index}", prompt=obj["problem"],
                                               completion=obj["solution"], label=1, answer=answer, meta=meta), loc))
    return require_records(out, path, "problems")
