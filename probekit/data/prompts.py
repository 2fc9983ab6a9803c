"""The prompts file `probekit generate` reads: one JSON object per line, {"id", "prompt", "gold"?}.

`id` names the group the prompt's samples form; `gold`, when present, is the
reference answer samples are graded against. Bad records fail with
file:line like every other reader (or are skipped and counted with
`skip_invalid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from probekit.data.schema import read_records, scalar_text
from probekit.errors import ProbekitError
from probekit.io import write_jsonl


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    gold: str | None = None


def _parse(obj: dict, loc: str) -> Prompt:
    pid, text, gold = obj.get("id"), obj.get("prompt"), obj.get("gold")
    if pid is None or isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise ProbekitError(f"{loc}: field 'id' must be a string or integer")
    if not isinstance(text, str) or not text.strip():
        raise ProbekitError(f"{loc}: field 'prompt' must be a non-empty string")
    gold = scalar_text(gold, loc, "field 'gold'")
    if "\x00" in str(pid) or (gold is not None and "\x00" in gold):
        raise ProbekitError(f"{loc}: 'id' and 'gold' may not contain a NUL character")
    return Prompt(str(pid), text, gold)


def read_prompts(path: str | Path, skip_invalid: bool = False) -> tuple[list[Prompt], int]:
    """(prompts, number of invalid records skipped); duplicate ids are always an error."""
    return read_records(path, _parse, skip_invalid, "prompts")


def write_prompts(path: str | Path, prompts: list[Prompt]) -> None:
    """Write prompts in the format `read_prompts` reads (gold omitted when unknown)."""
    write_jsonl(path, ({"id": p.id, "prompt": p.prompt, **({} if p.gold is None else {"gold": p.gold})} for p in prompts))
