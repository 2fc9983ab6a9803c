"""Corrupted copies of GSM8K gold solutions: one wrong result, carried forward.

A gold solution annotates every computation as `<<expr=result>>`. Changing one
result and recomputing every later computation that uses it gives a wrong but
self-consistent solution whose first wrong character is known exactly: a
(chosen, rejected) pair with a ground-truth error position, which real model
samples never have.

Which later numbers "use" a result is decided by value, from the start of the
result's line on. A result is only changed (corrupted, or carried) when that
is unambiguous: its value must not be one of its own operands, and if it
already occurred (in the question or earlier) it must not be an operand of a
later computation. Candidates that would be ambiguous, touch a line with an
unannotated equation (which cannot be recomputed), give negatives or
non-terminating/less even decimals (a division that no longer comes out
even), or leave the final answer unchanged are rejected; a problem with no
valid candidate is skipped and counted.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from probekit.data.gsm8k import final_answer, gold_completion, gold_records, gold_trajectory, split_name
from probekit.data.schema import Pair, Trajectory, require_records

ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")
UNANNOTATED_EQUALS = re.compile(r"=(?!\s*\$?\s*<<)")
NUMBER = re.compile(r"(?<![\w.])(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_DRAWS_PER_STEP = 3


def evaluate_expression(expr: str) -> Fraction | None:
    """Exactly evaluate `+ - * /` and parentheses over decimal literals; None if not such an expression.

    Literals are read from their source text into `Fraction`s, so `0.1*3` is 3/10.
    """
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None
    try:
        return _eval_node(tree.body, expr.strip())
    except (ValueError, ZeroDivisionError):
        return None


def _eval_node(node: ast.AST, src: str) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(ast.get_source_segment(src, node))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand, src)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval_node(node.left, src), _eval_node(node.right, src)
        return _apply(_OPS[type(node.op)], left, right)
    raise ValueError(f"unsupported expression node {type(node).__name__}")


def _apply(op: str, left: Fraction, right: Fraction) -> Fraction:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return left / right


def wrong_op_results(expr: str) -> list[Fraction]:
    """Results of `expr` with its outermost operator replaced by each other one (a "wrong operation")."""
    src = expr.strip()
    try:
        node = ast.parse(src, mode="eval").body
        if not (isinstance(node, ast.BinOp) and type(node.op) in _OPS):
            return []
        left, right = _eval_node(node.left, src), _eval_node(node.right, src)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return []
    out = []
    for op in "+-*/":
        if op != _OPS[type(node.op)] and not (op == "/" and right == 0):
            out.append(_apply(op, left, right))
    return out


def corrupt_value(rng: random.Random, value: int, wrong_op: Sequence[Fraction | int] = ()) -> tuple[int, str]:
    """A wrong positive integer for `value` and the kind of error, drawn uniformly over the kinds possible.

    Kinds: `off_by_one`, `off_by_k` (2..9), `digit_swap` (two adjacent digits),
    `wrong_op` (one of the given results of the same operands under another
    operator). Shared by the synthetic generator and the gold corrupter.
    """
    options: dict[str, list[int]] = {
        "off_by_one": [v for v in (value - 1, value + 1) if v > 0],
        "off_by_k": [v for k in range(2, 10) for v in (value - k, value + k) if v > 0],
    }
    digits = str(value)
    swaps = {
        int(digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :])
        for i in range(len(digits) - 1)
        if digits[i] != digits[i + 1] and not (i == 0 and digits[1] == "0")
    }
    options["digit_swap"] = sorted(swaps)
    options["wrong_op"] = sorted({int(v) for v in wrong_op if v == int(v) and 0 < v != value})
    kind = rng.choice([k for k, vals in options.items() if vals])
    return rng.choice(options[kind]), kind


@dataclass(frozen=True)
class _Step:
    """One `<<expr=result>>` annotation, the number printed right after it, and its text region.

    The region starts at the beginning of the step's line (or at the end of the
    previous annotation on the same line), so that an answer-first sentence
    ("He eats 32 because 2 x 16 = <<2*16=32>>32") has both 32s carried.
    """

    region: int
    start: int
    end: int
    expr: str
    result: Fraction
    shown: Fraction | None
    operands: frozenset[Fraction]


class AnnotatedSolution:
    """A parsed annotated gold answer, with what each step's result could be confused with."""

    def __init__(self, question: str, annotated: str, steps: list[_Step]) -> None:
        self.question, self.annotated, self.steps = question, annotated, steps
        known = _numbers(question)
        self.seen_before = [known | _numbers(annotated[: s.region]) for s in steps]
        self.used_after = [frozenset().union(*(s.operands for s in steps[j + 1 :])) for j in range(len(steps))]
        # Lines with an equation the calculator did not annotate ("56+4 = 60"): it
        # cannot be recomputed, so a corruption must leave these lines untouched.
        self.free_equations = {
            i for i, line in enumerate(annotated.split("\n")) if UNANNOTATED_EQUALS.search(ANNOTATION.sub("<<>>", line))
        }

    def can_carry(self, j: int, mapping: dict[Fraction, Fraction]) -> bool:
        """Whether step j's result may be replaced everywhere after its region starts.

        Not if it is one of its own operands, already carried, printed differently,
        or both seen earlier and used later (a later use could mean either value).
        """
        step = self.steps[j]
        return (
            step.result not in step.operands
            and step.result not in mapping
            and step.shown == step.result
            and not (step.result in self.seen_before[j] and step.result in self.used_after[j])
        )

    def corrupt(self, k: int, wrong: int) -> str | None:
        """The annotated answer with step k's result set to `wrong` and carried forward, or None if invalid."""
        if not self.can_carry(k, {}):
            return None
        mapping = {self.steps[k].result: Fraction(wrong)}
        rewritten = {k: (self.steps[k].expr, Fraction(wrong), dict(mapping))}
        for j in range(k + 1, len(self.steps)):
            step = self.steps[j]
            expr = _replace_numbers(step.expr, mapping, keep_commas=False)
            if expr == step.expr:
                if step.result in mapping:  # an independent step recomputes a carried value: ambiguous
                    return None
                continue
            value = evaluate_expression(expr)
            places = None if value is None else _decimal_places(value)
            if value is None or value < 0 or places is None or places > _decimal_places(step.result):
                return None  # e.g. a division that no longer comes out even
            if value != step.result:
                if not self.can_carry(j, mapping):
                    return None
                mapping[step.result] = value
            rewritten[j] = (expr, value, dict(mapping))
        text = self._rewrite(k, rewritten)
        old_lines, new_lines = self.annotated.split("\n"), text.split("\n")
        if any(old_lines[i] != new_lines[i] for i in self.free_equations):
            return None
        return text

    def _rewrite(self, k: int, rewritten: dict[int, tuple[str, Fraction, dict]]) -> str:
        """Apply new annotations and replace visible carried numbers, each from its step's region on."""
        text, steps = self.annotated, self.steps
        pieces, mapping = [text[: steps[k].region]], {}
        for j in range(k, len(steps)):
            step = steps[j]
            if j in rewritten:
                expr, value, mapping = rewritten[j]
            stop = steps[j + 1].region if j + 1 < len(steps) else len(text)
            annotation = f"<<{expr}={_format(value)}>>" if j in rewritten else text[step.start : step.end]
            pieces += [
                _replace_numbers(text[step.region : step.start], mapping),
                annotation,
                _replace_numbers(text[step.end : stop], mapping),
            ]
        return "".join(pieces)


def _number(token: str) -> Fraction:
    return Fraction(token.replace(",", ""))


def _numbers(text: str) -> frozenset[Fraction]:
    return frozenset(_number(t) for t in NUMBER.findall(text))


def _format(value: Fraction, like: str = "") -> str:
    """Write `value` as a plain decimal; with thousands commas if the number it replaces had them."""
    if value.denominator == 1:
        return f"{int(value):,}" if "," in like else str(int(value))
    return f"{float(value):.{_decimal_places(value)}f}"


def _decimal_places(value: Fraction) -> int | None:
    """Digits after the point needed to write `value` exactly (up to 6), or None."""
    for places in range(0, 7):
        if (value * 10**places).denominator == 1:
            return places
    return None


def _replace_numbers(text: str, mapping: dict[Fraction, Fraction], keep_commas: bool = True) -> str:
    def sub(m: re.Match) -> str:
        value = _number(m.group())
        return _format(mapping[value], m.group() if keep_commas else "") if value in mapping else m.group()

    return NUMBER.sub(sub, text) if mapping else text


def parse_annotated(question: str, annotated: str) -> AnnotatedSolution | None:
    """Parse every `<<expr=result>>` of a gold answer; None if any is not plain arithmetic."""
    steps: list[_Step] = []
    for m in ANNOTATION.finditer(annotated):
        try:
            result = _number(m.group(2).strip())
        except ValueError:
            return None
        if evaluate_expression(m.group(1)) is None:
            return None
        shown = NUMBER.match(annotated, m.end())
        region = max(annotated.rfind("\n", 0, m.start()) + 1, steps[-1].end if steps else 0)
        steps.append(
            _Step(region, m.start(), m.end(), m.group(1), result, _number(shown.group()) if shown else None, _numbers(m.group(1)))
        )
    if len(steps) != annotated.count("<<"):
        return None
    return AnnotatedSolution(question, annotated, steps)


def first_difference(a: str, b: str) -> int:
    """Index of the first character where `a` and `b` differ (the shorter length if one is a prefix)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def corrupt_solution(rng: random.Random, question: str, annotated: str, n: int) -> tuple[list[tuple[str, dict]], str | None]:
    """Up to `n` distinct corrupted copies of one annotated gold answer, each with its meta.

    Steps are tried in a random order, each with a few random wrong values,
    until `n` copies are found. Returns the copies (annotated text, meta) and,
    when there are none, why.
    """
    solution = parse_annotated(question, annotated)
    if solution is None:
        return [], "unparseable annotation"
    if not solution.steps:
        return [], "no annotations"
    candidates = [k for k, s in enumerate(solution.steps) if s.result.denominator == 1 and s.result > 0]
    rng.shuffle(candidates)
    gold_answer = final_answer(gold_completion(annotated))
    copies: dict[str, dict] = {}
    for k in candidates * n:
        step = solution.steps[k]
        for _ in range(_DRAWS_PER_STEP):
            wrong, kind = corrupt_value(rng, int(step.result), wrong_op_results(step.expr))
            text = solution.corrupt(k, wrong)
            if text is not None and text not in copies and final_answer(gold_completion(text)) != gold_answer:
                copies[text] = {"corrupted_step": k, "kind": kind, "original_value": int(step.result), "wrong_value": wrong}
                break
        if len(copies) == n:
            break
    return list(copies.items()), None if copies else "no valid corruption"


def corrupt_gold(
    gold_path: str | Path, n_per_problem: int = 1, seed: int = 0, limit: int | None = None, skipped: Counter | None = None
) -> tuple[list[Trajectory], list[Pair]]:
    """Gold trajectories (label 1) and up to `n_per_problem` corrupted copies each (label 0), with pairs.

    Corrupted copies carry `error_char` (first character differing from the
    gold completion) and in `meta` the corrupted annotated text, step index,
    kind and values. Problems without a valid corruption are left out
    entirely; their reasons are counted into `skipped` when given.
    """
    rng = random.Random(seed)
    split = split_name(gold_path)
    trajectories: list[Trajectory] = []
    pairs: list[Pair] = []
    for index, question, annotated in gold_records(gold_path):
        if limit is not None and index >= limit:
            break
        copies, reason = corrupt_solution(rng, question, annotated, n_per_problem)
        if reason is not None:
            if skipped is not None:
                skipped[reason] += 1
            continue
        gold = gold_trajectory(split, index, question, annotated)
        trajectories.append(gold)
        for j, (text, meta) in enumerate(copies):
            completion = gold_completion(text)
            bad = Trajectory(
                id=f"{gold.group}-corrupt{j}",
                group=gold.group,
                prompt=question,
                completion=completion,
                label=0,
                answer=final_answer(completion),
                error_char=first_difference(gold.completion, completion),
                meta={**meta, "annotated": text},
            )
            trajectories.append(bad)
            pairs.append(Pair(gold.id, bad.id))
    return require_records(trajectories, gold_path, "problems", skipped), pairs
