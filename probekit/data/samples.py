"""Bring your own samples: the common layout of outside generators (vLLM and the like) as trajectories.

One JSON record per prompt: the prompt, a list of sampled completions (strings,
or objects with a text field), and optionally a list of predicted answers, a
list of correctness flags, a gold answer and an id. Field names are options
(`SampleFields`), so a sampler's output goes straight to `probekit extract`
without a hand-written converter. Labels come from the correctness flags when
given, else from grading the answers against the gold one, else stay unset;
answers come from the answers list when given, else from the answer parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probekit.config import Config, option
from probekit.data.answers import get_parser, grade
from probekit.data.schema import Trajectory, check_trajectory, read_records, scalar_text
from probekit.errors import ProbekitError


@dataclass(frozen=True)
class SampleFields(Config):
    """Where each piece sits in a record (empty optional fields are simply absent)."""

    prompt_field: str = option("prompt", "Field holding the prompt text.")
    completions_field: str = option("completions", "Field holding the list of completions (strings, or objects with --text-field).")
    text_field: str = option("text", "Field of a completion object that holds its text.")
    answers_field: str | None = option(None, "Field holding the list of predicted answers, one per completion (default: parse them).")
    correct_field: str | None = option(None, "Field holding the list of correctness flags (true/false or 1/0), one per completion.")
    gold_field: str | None = option(None, "Field holding the gold answer; completions' answers are graded against it when no flags are given.")
    id_field: str | None = option(None, "Field holding the prompt's id (default: the line number).")
    answer_parser: str = option("gsm8k", "How answers are read from completions when no answers list is given: synth, gsm8k, last-number, regex:PATTERN.")

    def validate(self) -> None:
        get_parser(self.answer_parser)  # an unknown parser or a bad regex is a one-line error


@dataclass(frozen=True)
class _Group:
    """One record's trajectories, with the record's id for the duplicate check."""

    id: str
    trajectories: list[Trajectory]


def _flag(value: object, loc: str, k: int) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise ProbekitError(f"{loc}: correctness flag {k + 1} must be true/false or 1/0, got {value!r}")


def _list_field(obj: dict, name: str | None, n: int, loc: str) -> list | None:
    if name is None or obj.get(name) is None:
        return None
    value = obj[name]
    if not isinstance(value, list) or len(value) != n:
        raise ProbekitError(f"{loc}: field '{name}' must be a list of {n} values (one per completion)")
    return value


def parse_record(obj: dict, loc: str, fields: SampleFields, parse) -> _Group:
    """The trajectories of one record (see the module docstring)."""
    prompt, completions = obj.get(fields.prompt_field), obj.get(fields.completions_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProbekitError(f"{loc}: field '{fields.prompt_field}' must be a non-empty string")
    if not isinstance(completions, list) or not completions:
        raise ProbekitError(f"{loc}: field '{fields.completions_field}' must be a non-empty list")
    texts = []
    for k, c in enumerate(completions):
        text = c.get(fields.text_field) if isinstance(c, dict) else c
        if not isinstance(text, str) or not text.strip():
            raise ProbekitError(f"{loc}: completion {k + 1} must be a non-empty string (or an object with a '{fields.text_field}' string)")
        texts.append(text)
    group = obj.get(fields.id_field) if fields.id_field else loc.rsplit(":", 1)[-1]
    if group is None or isinstance(group, bool) or not isinstance(group, (str, int)) or "\x00" in str(group):
        raise ProbekitError(f"{loc}: field '{fields.id_field}' must be a string or integer without NUL characters")
    answers = _list_field(obj, fields.answers_field, len(texts), loc)
    flags = _list_field(obj, fields.correct_field, len(texts), loc)
    gold = scalar_text(obj.get(fields.gold_field), loc, f"field '{fields.gold_field}'") if fields.gold_field else None
    out = []
    for k, text in enumerate(texts):
        answer = parse(text) if answers is None else scalar_text(answers[k], loc, f"answer {k + 1} of field '{fields.answers_field}'")
        label = _flag(flags[k], loc, k) if flags is not None else grade(answer, gold)
        t = Trajectory(id=f"{group}-{k}", group=str(group), prompt=prompt, completion=text, label=label, answer=answer)
        out.append(check_trajectory(t, loc))
    return _Group(str(group), out)


def read_samples(path: str | Path, fields: SampleFields = SampleFields(), skip_invalid: bool = False) -> tuple[list[Trajectory], int]:
    """(trajectories, records skipped) from a samples file; bad records are `file:line: reason`."""
    fields.validate()
    parse = get_parser(fields.answer_parser)
    groups, skipped = read_records(path, lambda obj, loc: parse_record(obj, loc, fields, parse), skip_invalid, "records")
    return [t for g in groups for t in g.trajectories], skipped
