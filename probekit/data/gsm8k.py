"""GSM8K adapters: labelled model solutions and gold solutions as trajectories.

`example_model_solutions.jsonl` gives four human-checked model solutions per
test problem, the scored trajectories of the reward-model benchmark. The gold
solutions of `train.jsonl`/`test.jsonl` are rewritten into the same shape as
model solutions (`A: n` final line, calculator annotations removed) so that a
probe fitted on gold/corrupted pairs sees text like the text it will score.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from probekit.data.schema import Trajectory, check_trajectory, require_records
from probekit.errors import ProbekitError, where
from probekit.io import iter_jsonl

SOLUTION_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
ANNOTATION = re.compile(r"<<[^<>]*>>")
GOLD_FINAL = re.compile(r"\n?####\s*(.*?)\s*$", re.DOTALL)


def normalize_answer(text: str | None) -> str | None:
    """Canonical form of a final answer, so that votes for "$1,080." and "1080" agree.

    Strips blanks, `$` and thousands commas, a trailing full stop, and a zero
    fraction ("18.00" -> "18"); anything else (units, fractions like "1/5") is
    kept verbatim. Returns None for a missing or empty answer.
    """
    if text is None:
        return None
    s = text.strip().replace("$", "").replace(",", "").strip().rstrip(".").strip()
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)
    return s or None


def final_answer(solution: str) -> str | None:
    """The normalised text after the last `A:` of a solution (None when there is none)."""
    _, sep, tail = solution.rpartition("A:")
    return normalize_answer(tail) if sep else None


def strip_annotations(text: str) -> str:
    """Remove GSM8K calculator annotations (`<<48/2=24>>`), keeping the visible text."""
    return ANNOTATION.sub("", text)


def gold_completion(annotated: str) -> str:
    """Rewrite a gold answer (`... #### n`) as a model-style solution ending in `A: n`."""
    match = GOLD_FINAL.search(annotated)
    if match is None:
        raise ValueError("gold answer has no '#### <answer>' line")
    body = annotated[: match.start()].rstrip()
    return strip_annotations(f"{body}\nA: {match.group(1)}")


def labelled_solutions(path: str | Path, strip_calculator: bool = False) -> list[Trajectory]:
    """One trajectory per (test problem, model solution) of `example_model_solutions.jsonl`.

    Solutions without an `A:` line (11 of 5,276, mostly truncated) are kept
    with `answer=None`: they are still scored trajectories, they just cast no
    vote. `strip_calculator` removes the `<<...>>` annotations, for comparing
    with probes fitted on gold/corrupted data (which never shows them).
    """
    out: list[Trajectory] = []
    for index, (lineno, obj) in enumerate(iter_jsonl(path)):
        loc = where(path, lineno)
        _require_strings(obj, ("question", "ground_truth"), loc)
        for key in SOLUTION_KEYS:
            entry = obj.get(key)
            if not isinstance(entry, dict) or not isinstance(entry.get("solution"), str) or not isinstance(entry.get("is_correct"), bool):
                raise ProbekitError(f"{loc}: field '{key}' must be {{\"is_correct\": bool, \"solution\": str}}")
            solution = entry["solution"]
            out.append(check_trajectory(
                Trajectory(
                    id=f"{index}-{key}",
                    group=f"gsm8k-test-{index}",
                    prompt=obj["question"],
                    completion=strip_annotations(solution) if strip_calculator else solution,
                    label=int(entry["is_correct"]),
                    answer=final_answer(solution),
                    meta={"source_key": key, "ground_truth": final_answer(obj["ground_truth"])},
                ), loc))
    return require_records(out, path, "problems")


def gold_records(path: str | Path) -> Iterator[tuple[int, str, str]]:
    """Yield (problem_index, question, annotated answer) of a GSM8K split file, checked (its gold trajectory too);
    a file without any is an error."""
    split = split_name(path)
    index = -1
    for index, (lineno, obj) in enumerate(iter_jsonl(path)):
        loc = where(path, lineno)
        _require_strings(obj, ("question", "answer"), loc)
        if GOLD_FINAL.search(obj["answer"]) is None:
            raise ProbekitError(f"{loc}: answer has no '#### <answer>' line")
        check_trajectory(gold_trajectory(split, index, obj["question"], obj["answer"]), loc)
        yield index, obj["question"], obj["answer"]
    if index < 0:
        require_records([], path, "problems")


def split_name(path: str | Path) -> str:
    """`train` for `.../train.jsonl` (or `train.jsonl.gz`): the split in group names."""
    return Path(path).name.split(".")[0]


def gold_trajectory(split: str, index: int, question: str, annotated: str) -> Trajectory:
    """The gold solution of one problem as a label-1 trajectory of group `gsm8k-{split}-{index}`."""
    completion = gold_completion(annotated)
    return Trajectory(
        id=f"gsm8k-{split}-{index}-gold",
        group=f"gsm8k-{split}-{index}",
        prompt=question,
        completion=completion,
        label=1,
        answer=final_answer(completion),
    )


def gold_solutions(path: str | Path) -> list[Trajectory]:
    """Gold solutions of `train.jsonl`/`test.jsonl` as label-1 trajectories."""
    split = split_name(path)
    return [gold_trajectory(split, i, q, a) for i, q, a in gold_records(path)]


def _require_strings(obj: dict, keys: tuple[str, ...], loc: str) -> None:
    for key in keys:
        if not isinstance(obj.get(key), str):
            raise ProbekitError(f"{loc}: missing or non-string field '{key}'")
