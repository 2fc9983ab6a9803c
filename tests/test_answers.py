"""Answer parsers and grading on hand-written completions."""

from __future__ import annotations

import pytest

from probekit.data.answers import as_number, get_parser, grade
from probekit.errors import ProbekitError


@pytest.mark.parametrize("spec,text,want", [
    ("synth", "Step 1: 12 + 7 = 19.\nA: 19", "19"),
    ("synth", "A: 3\nwait, no.\nA: 1,080.", "1080"),
    ("synth", "A: 18.00\nThanks!", "18"),
    ("synth", "19 apples", None),
    ("gsm8k", "She has 5 + 3 = 8.\n#### 8", "8"),
    ("gsm8k", "#### -12\n", "-12"),
    ("gsm8k", "so the total is $1,200.", "1200"),
    ("gsm8k", "A: 7", "7"),
    ("gsm8k", "no digits at all", None),
    ("last-number", "3 apples, then 4.5 more", "4.5"),
    ("last-number", "lost -6 points", "-6"),
    ("last-number", "", None),
    ("regex:answer is (\\d+)", "the answer is 4, no, the answer is 5", "5"),
    ("regex:answer is (\\d+)", "nothing here", None),
])
def test_parsers(spec, text, want):
    assert get_parser(spec)(text) == want


def test_grade_normalises_gold():
    assert grade("1080", "$1,080") == 1 and grade("5", 5) == 1 and grade("5", "6") == 0
    assert grade(None, "6") == 0 and grade("6", None) is None
    assert grade("7.50", "7.5") == 1 and grade("1/2", "0.5") == 1 and grade("seven", "seven") == 1 and grade("7", "seven") == 0


@pytest.mark.parametrize("answer,gold,want", [
    ("13.3333", "13.333333333333334", 1),  # gsm-hard's Python-float gold (40/3): relative error 2.5e-6
    ("40/3", "13.333333333333334", 1),
    ("13.33", "13.333333333333334", 0),  # 2.5e-4: beyond NeMo-Skills' 1e-4 too
    ("2.5001", "2.5", 1), ("2.6", "2.5", 0), ("-0.33333", "-0.33333333333333337", 1), ("0.3333", "-0.3333", 0),
    ("3431580.2", "3431580", 1),  # a decimal answer to an integer gold: the tolerance applies, as in NeMo-Skills
    ("3431581", "3431580", 0), ("10001", "10000", 0),  # two integers: equal or wrong (NeMo-Skills would take these)
    ("500", "5", 0),  # NeMo-Skills' percentage leniency (g·100, g/100) is not taken
    ("1e400", "1e400", 1), ("2e400", "1e400", 0),
    ("1,000", "1000", 1), ("1,000.5", "1000.5", 1),  # the answer is normalised as the gold is
    ("1e-400", "0", 0),  # exact: no float underflow to 0
    ("inf", "5", 0), ("-0", "0", 1), ("3/4", "0.75", 1),
])
def test_numbers_match_within_the_official_graders_tolerance(answer, gold, want):
    assert grade(answer, gold) == want


@pytest.mark.parametrize("spec,match", [("nope", "choose from"), ("regex:(", "not a valid"), ("regex:\\d+", "needs a group")])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises(ProbekitError, match=match):
        get_parser(spec)


def test_a_huge_exponent_is_compared_as_text():
    """Fraction("1e999999999") would build a billion-digit integer (seconds per answer, a hang over a file); such an
    answer is no number to `grade` and is compared as text."""
    assert as_number("1e999999999") is None and as_number("1e400") == 10 ** 400
    assert grade("1e999999999", "5") == 0 and grade("1e999999999", "1e999999999") == 1


def test_last_number_reads_exponents_and_fractions():
    parse = get_parser("last-number")
    assert parse("A: 1e5") == "1e5" and parse("so 3/4 of it") == "3/4" and parse("$1,080.5.") == "1080.5"
