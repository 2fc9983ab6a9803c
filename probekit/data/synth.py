"""Seeded synthetic multi-step arithmetic word problems: the default demo/test dataset.

Each problem has a few sampled solutions written as a chain of steps
("Step 1: 12 + 7 = 19."); a wrong solution has exactly one wrong result,
carried forward consistently, so its label, final answer and first wrong
character (`error_char`) are all known exactly. That makes it a dataset on
which probes, Q-value filtering and error localisation can be checked without
downloading anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from probekit.data.corrupt import corrupt_value, first_difference
from probekit.data.prompts import Prompt
from probekit.data.schema import Trajectory

MAX_VALUE = 10_000  # every intermediate result stays in 1..MAX_VALUE-1
_DRAWS_PER_STEP = 50

NAMES = ("Mia", "Tom", "Ava", "Leo", "Zara", "Omar", "Lena", "Ravi", "Nina", "Sam")
OBJECTS = ("apples", "marbles", "stickers", "books", "coins", "shells", "cards", "pencils")
INTROS = ("{name} has {a} {obj}.", "{name} starts the day with {a} {obj}.", "There are {a} {obj} in {name}'s bag.")
STEP_TEMPLATES = {
    "+": ("{name} buys {b} more {obj}.", "A friend gives {name} {b} more {obj}.", "{name} finds {b} more {obj}."),
    "-": ("{name} gives away {b} {obj}.", "{name} loses {b} {obj}.", "{name} uses {b} of the {obj}."),
    "*": ("Then the number of {obj} becomes {b} times as large.", "{name} ends up with {b} times as many {obj}."),
}
QUESTIONS = ("How many {obj} does {name} have now?", "How many {obj} are there at the end?")


@dataclass(frozen=True)
class _Problem:
    """A start value and the operations applied to it, in order."""

    start: int
    ops: tuple[tuple[str, int], ...]  # (operator, operand) applied to the running value

    def chain(self, step: int | None = None, wrong: int | None = None) -> list[tuple[int, str, int, int]]:
        """The steps (a, op, b, shown result); with `wrong`, step `step` shows it and later steps use it."""
        rows, value = [], self.start
        for i, (op, b) in enumerate(self.ops):
            result = wrong if i == step else _apply(op, value, b)
            rows.append((value, op, b, result))
            value = result
        return rows


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _render(rows: list[tuple[int, str, int, int]]) -> str:
    lines = [f"Step {i}: {a} {op} {b} = {c}." for i, (a, op, b, c) in enumerate(rows, start=1)]
    return "\n".join(lines + [f"A: {rows[-1][3]}"])


def _valid(rows: list[tuple[int, str, int, int]]) -> bool:
    return all(0 < c < MAX_VALUE for *_, c in rows)


def _draw_problem(rng: random.Random, n_steps: int) -> tuple[_Problem, str]:
    """A random problem and its wording; every correct intermediate stays in range."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    value = rng.randint(2, 30)
    start, ops = value, []
    for _ in range(n_steps):
        allowed = (["+"] if value + 2 < MAX_VALUE else []) + (["-"] if value >= 3 else []) + (["*"] if value * 2 < MAX_VALUE else [])
        op = rng.choice(allowed)
        if op == "+":
            b = rng.randint(2, min(30, MAX_VALUE - 1 - value))
        elif op == "-":
            b = rng.randint(1, value - 1)
        else:
            b = rng.randint(2, min(5, (MAX_VALUE - 1) // value))
        ops.append((op, b))
        value = _apply(op, value, b)
    sentences = [rng.choice(INTROS).format(name=name, a=start, obj=obj)]
    sentences += [rng.choice(STEP_TEMPLATES[op]).format(name=name, b=b, obj=obj) for op, b in ops]
    sentences.append(rng.choice(QUESTIONS).format(name=name, obj=obj))
    return _Problem(start, tuple(ops)), " ".join(sentences)


def _draw_error(rng: random.Random, problem: _Problem) -> tuple[int, int, str]:
    """(step, wrong value, kind) with the step chosen uniformly and the carried chain still in range.

    Redraws the wrong value (and, in the rare case none fits, the step); the
    last step always admits one, so this ends.
    """
    correct = problem.chain()
    while True:
        step = rng.randrange(len(problem.ops))
        a, op, b, c = correct[step]
        alternatives = [_apply(o, a, b) for o in "+-*" if o != op]
        for _ in range(_DRAWS_PER_STEP):
            wrong, kind = corrupt_value(rng, c, alternatives)
            rows = problem.chain(step, wrong)
            if _valid(rows) and rows[-1][3] != correct[-1][3]:
                return step, wrong, kind


def synth_problems(
    n_problems: int,
    solutions_per_problem: int = 4,
    p_correct: float = 0.5,
    min_steps: int = 2,
    max_steps: int = 4,
    seed: int = 0,
) -> list[Trajectory]:
    """`n_problems` word problems with `solutions_per_problem` sampled solutions each.

    Each solution is correct with probability `p_correct`; otherwise one step,
    chosen uniformly, gets a wrong result (off by one or a small k, swapped
    digits, or another operator's result) that later steps carry forward.
    Deterministic for a given `seed`.
    """
    if not 1 <= min_steps <= max_steps:
        raise ValueError("need 1 <= min_steps <= max_steps")
    rng = random.Random(seed)
    out: list[Trajectory] = []
    for i in range(n_problems):
        problem, prompt = _draw_problem(rng, rng.randint(min_steps, max_steps))
        correct_rows = problem.chain()
        correct = _render(correct_rows)
        for j in range(solutions_per_problem):
            rows, meta = correct_rows, {}
            if rng.random() >= p_correct:
                step, wrong, kind = _draw_error(rng, problem)
                rows = problem.chain(step, wrong)
                meta = {"corrupted_step": step, "kind": kind, "original_value": correct_rows[step][3], "wrong_value": wrong}
            completion = _render(rows)
            out.append(
                Trajectory(
                    id=f"synth-{i}-{j}",
                    group=f"synth-{i}",
                    prompt=prompt,
                    completion=completion,
                    label=int(rows is correct_rows),
                    answer=str(rows[-1][3]),
                    error_char=None if rows is correct_rows else first_difference(correct, completion),
                    meta=meta,
                )
            )
    return out


INSTRUCTION = "Solve the word problem step by step. Finish with a line 'A: <number>'."


def synth_prompts(n_problems: int, min_steps: int = 1, max_steps: int = 2, shots: int = 2, seed: int = 0) -> list:
    """Prompts (with gold answers) for `probekit generate`: synthetic problems, optionally with worked examples.

    With `shots` > 0, each prompt shows that many other problems solved in the
    `Step k: a op b = c.` / `A: n` format, then the problem to solve; a sampled
    completion then ends its answer line with a blank line (use `--stop` with a
    blank line so the model does not go on to invent the next problem).
    """
    if not 1 <= min_steps <= max_steps or shots < 0 or n_problems < 1:
        raise ValueError("need n_problems >= 1, 1 <= min_steps <= max_steps and shots >= 0")
    rng = random.Random(seed)
    out = []
    for i in range(n_problems):
        examples = [_draw_problem(rng, rng.randint(min_steps, max_steps)) for _ in range(shots)]
        problem, text = _draw_problem(rng, rng.randint(min_steps, max_steps))
        parts = [INSTRUCTION] + [f"Problem: {t}\n{_render(p.chain())}" for p, t in examples] + [f"Problem: {text}"]
        out.append(Prompt(id=f"synth-{i}", prompt="\n\n".join(parts) + "\n", gold=str(problem.chain()[-1][3])))
    return out
