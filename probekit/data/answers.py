"""Answer parsers for generated solutions, and grading against a gold answer.

A parser turns a completion into its final answer, normalised like every
other answer in probekit (`gsm8k.normalize_answer`: "$1,080." and "1080"
agree), or None when it gives none. Parsers by name:

* `synth`: the text after the last `A:` (the synthetic problems' format, and
  the GSM8K model solutions'), first line only;
* `gsm8k`: `#### n` when present, else `A: n`, else the last number;
* `last-number`: the last number in the text;
* `regex:PATTERN`: the first group of the last match of PATTERN.

`grade` compares numbers by value with NeMo-Skills' relative tolerance (1e-4)
where either side is not an integer, so a gsm-hard float gold is met by a
rounded answer; integers must be equal.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Callable

from probekit.data.gsm8k import final_answer, normalize_answer
from probekit.errors import ProbekitError

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?")  # 1,080.5, 1e5, 3/4
GSM8K_FINAL = re.compile(r"####\s*([^\n]*)")
PARSERS = ("synth", "gsm8k", "last-number", "regex:PATTERN")

Parser = Callable[[str], "str | None"]


def last_number(text: str) -> str | None:
    """The last number in the text (commas and `$` allowed), normalised."""
    found = NUMBER.findall(text)
    return normalize_answer(found[-1]) if found else None


def synth_answer(text: str) -> str | None:
    """The first line after the last `A:`, normalised."""
    answer = final_answer(text)
    return normalize_answer(answer.splitlines()[0]) if answer else None


def gsm8k_answer(text: str) -> str | None:
    """`#### n`, else `A: n`, else the last number."""
    found = GSM8K_FINAL.findall(text)
    if found and normalize_answer(found[-1]):
        return normalize_answer(found[-1])
    return synth_answer(text) or last_number(text)


def _regex_parser(pattern: str) -> Parser:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ProbekitError(f"--answer regex:{pattern}: not a valid regular expression ({exc})") from None
    if compiled.groups < 1:
        raise ProbekitError(f"--answer regex:{pattern}: the pattern needs a group (...) around the answer")

    def parse(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        return normalize_answer(matches[-1].group(1)) if matches else None

    return parse


def get_parser(spec: str) -> Parser:
    """The parser named by `spec` (see the module docstring)."""
    if spec.startswith("regex:"):
        return _regex_parser(spec[len("regex:"):])
    named = {"synth": synth_answer, "gsm8k": gsm8k_answer, "last-number": last_number}
    if spec not in named:
        raise ProbekitError(f"--answer '{spec}': choose from {', '.join(PARSERS)}")
    return named[spec]


# Relative tolerance of a numeric match, NeMo-Skills' `math_equal(..., tolerance=1e-4)` (`math.isclose(.., rel_tol=1e-4)`,
# after ToRA's grader): the grader that produced the `is_correct` labels of the OpenMath predictions the official code
# evaluates on (gsm-hard's gold answers are Python floats such as 13.333333333333334, which no solution writes out).
REL_TOL = 1e-4


# Decimal exponents beyond this are not turned into exact fractions (Fraction("1e999999999") builds a billion-digit
# integer): such answers are compared as text. A float reaches 1e308, so nothing a grader meets is lost.
MAX_EXPONENT = 400
FRACTION = re.compile(r"-?\d+/\d+")


def as_number(text: str | None) -> Fraction | None:
    """The exact value of a normalised answer ("7.5", "1e5", "3/4"), or None when it is not a finite number of
    reasonable size."""
    if text is None:
        return None
    try:
        if FRACTION.fullmatch(text):
            return Fraction(text)
        value = Decimal(text)
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    if not value.is_finite() or (value and abs(value.adjusted()) > MAX_EXPONENT):
        return None
    return Fraction(value)


def numbers_match(a: Fraction, g: Fraction) -> bool:
    """Whether answer `a` grades as gold `g`: equal, or, unless both are integers, within REL_TOL of each other
    (|a - g| <= REL_TOL * max(|a|, |g|), `math.isclose`'s rule, computed exactly: 1e-400 is not 0).

    Two different integers never match (NeMo-Skills' tolerance would take 10001 for 10000: an off-by-one count is a
    wrong answer); NeMo-Skills' other leniency, accepting g·100 and g/100 for a percentage, is not taken either.
    """
    if a == g:
        return True
    if a.denominator == 1 and g.denominator == 1:
        return False
    return abs(a - g) <= Fraction(REL_TOL) * max(abs(a), abs(g))


def grade(answer: str | None, gold: str | None) -> int | None:
    """1 when the parsed answer equals the gold one (numbers by value, `numbers_match`: 7.50 = 7.5, 13.3333 =
    13.333333333333334), 0 otherwise, None without gold."""
    if gold is None:
        return None
    gold_text = normalize_answer(str(gold))
    answer = normalize_answer(answer) if answer is not None else None  # both sides alike: "1,000" is 1000
    if answer is None or gold_text is None:
        return 0
    a, g = as_number(answer), as_number(gold_text)
    return int(numbers_match(a, g) if a is not None and g is not None else answer == gold_text)
