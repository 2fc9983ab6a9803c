"""The synthetic generator and the gold corrupter: exactly one wrong result, carried forward, at a known character."""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from fractions import Fraction

import pytest

from probekit.data.corrupt import (
    ANNOTATION,
    NUMBER,
    corrupt_gold,
    corrupt_value,
    evaluate_expression,
    first_difference,
    parse_annotated,
    wrong_op_results,
)
from probekit.data.gsm8k import gold_completion, gold_records, normalize_answer
from probekit.data.schema import read_pairs, read_trajectories
from probekit.data.synth import MAX_VALUE, synth_problems

STEP = re.compile(r"Step (\d+): (\d+) ([-+*]) (\d+) = (\d+)\.")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


# ---------------------------------------------------------------- evaluator and wrong values


@pytest.mark.parametrize(
    "expr, value",
    [("48/2", 24), ("2*20*.01", Fraction(2, 5)), ("(3+4)*2", 14), ("-5+2", -3), (" 0.1*3 ", Fraction(3, 10)), ("1/0", None),
     ("2**3", None), ("__import__('os')", None), ("1,000+2", None), ("x+1", None), ("3 +", None)],
)
def test_evaluate(expr, value):
    assert evaluate_expression(expr) == value


def test_wrong_op_results():
    assert wrong_op_results("48/2") == [50, 46, 96]
    assert wrong_op_results("(1+2)*3") == [6, 0, 1]
    assert wrong_op_results("7") == []


def test_corrupt_value_kinds():
    rng = random.Random(0)
    kinds = Counter()
    for value in (1, 5, 12, 90, 1234):
        for _ in range(200):
            wrong, kind = corrupt_value(rng, value, [value * 3, value])
            kinds[kind] += 1
            assert wrong > 0 and wrong != value
            if kind == "off_by_one":
                assert abs(wrong - value) == 1
            elif kind == "off_by_k":
                assert 2 <= abs(wrong - value) <= 9
            elif kind == "digit_swap":
                assert sorted(str(wrong)) == sorted(str(value)) and len(str(wrong)) == len(str(value))
            else:
                assert wrong == value * 3
    assert set(kinds) == {"off_by_one", "off_by_k", "digit_swap", "wrong_op"}
    assert all(corrupt_value(rng, 7)[1] != "digit_swap" for _ in range(50))  # one digit: nothing to swap


# ---------------------------------------------------------------- synthetic problems


def steps_of(completion: str) -> list[tuple[int, str, int, int]]:
    lines = completion.splitlines()
    rows = [STEP.fullmatch(line) for line in lines[:-1]]
    assert all(rows), completion
    assert [int(m.group(1)) for m in rows] == list(range(1, len(rows) + 1))
    assert lines[-1] == f"A: {rows[-1].group(5)}"
    return [(int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))) for m in rows]


def test_synth_is_deterministic_per_seed():
    assert synth_problems(30, seed=7) == synth_problems(30, seed=7)
    assert synth_problems(30, seed=7) != synth_problems(30, seed=8)


def test_synth_shapes_and_labels():
    trajectories = synth_problems(300, solutions_per_problem=4, p_correct=0.5, min_steps=2, max_steps=4, seed=1)
    assert len(trajectories) == 1200
    assert [t.id for t in trajectories[:5]] == ["synth-0-0", "synth-0-1", "synth-0-2", "synth-0-3", "synth-1-0"]
    assert len({t.prompt for t in trajectories}) > 250  # wording varies
    groups = defaultdict(list)
    for t in trajectories:
        groups[t.group].append(t)
        assert 2 <= len(steps_of(t.completion)) <= 4
    assert all(len({t.prompt for t in members}) == 1 for members in groups.values())
    assert 0.4 < sum(t.label for t in trajectories) / len(trajectories) < 0.6
    assert Counter(t.meta.get("kind") for t in trajectories).keys() == {None, "off_by_one", "off_by_k", "digit_swap", "wrong_op"}
    assert all(t.label == 1 for t in synth_problems(20, p_correct=1.0))
    assert all(t.label == 0 for t in synth_problems(20, p_correct=0.0))


def test_synth_corrupted_solutions_have_exactly_one_carried_error():
    trajectories = synth_problems(400, p_correct=0.5, seed=2)
    correct_text = {t.group: t.completion for t in trajectories if t.label == 1}
    compared, not_last = 0, 0
    for t in trajectories:
        rows = steps_of(t.completion)
        assert all(0 < c < MAX_VALUE for *_, c in rows)
        assert all(rows[i + 1][0] == rows[i][3] for i in range(len(rows) - 1))  # each step continues from the last result
        wrong = [i for i, (a, op, b, c) in enumerate(rows) if OPS[op](a, b) != c]
        assert t.answer == str(rows[-1][3])
        if t.label == 1:
            assert wrong == [] and t.error_char is None and t.meta == {}
            continue
        assert wrong == [t.meta["corrupted_step"]]
        not_last += wrong[0] < len(rows) - 1
        a, op, b, c = rows[wrong[0]]
        assert c == t.meta["wrong_value"] != t.meta["original_value"] == OPS[op](a, b)
        # Recompute the correct chain from the same start and operands: the final answer differs.
        value = rows[0][0]
        for _, op_, b_, _ in rows:
            value = OPS[op_](value, b_)
        assert t.answer != str(value)
        e, lines = t.error_char, t.completion.splitlines()
        line_start = sum(len(line) + 1 for line in lines[: wrong[0]])
        assert line_start < e < line_start + len(lines[wrong[0]])  # inside the wrong step's line
        if t.group in correct_text:
            good = correct_text[t.group]
            assert t.completion[:e] == good[:e] and t.completion[e] != good[e]
            assert e > good.index(f"Step {wrong[0] + 1}:")
            compared += 1
    assert compared > 100
    # The wrong step is uniform over the steps, so most errors are carried through later steps.
    assert not_last > 0.5 * sum(t.label == 0 for t in trajectories)


# ---------------------------------------------------------------- gold corruption, hand-written cases

NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def corrupt(question: str, annotated: str, step: int, wrong: int) -> str | None:
    solution = parse_annotated(question, annotated)
    assert solution is not None
    return solution.corrupt(step, wrong)


def test_corruption_is_carried_into_later_steps_text_and_answer():
    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    assert corrupt(question, NATALIA, 0, 25) == (
        "Natalia sold 48/2 = <<48/2=25>>25 clips in May.\n"
        "Natalia sold 48+25 = <<48+25=73>>73 clips altogether in April and May.\n"
        "#### 73"
    )
    assert corrupt(question, NATALIA, 1, 70).endswith("48+24 = <<48+24=70>>70 clips altogether in April and May.\n#### 70")


def test_answer_first_sentences_and_thousands_commas():
    question = "Albert buys 2 large pizzas with 16 slices each and a small one with 16 slices."
    annotated = "He eats 32 slices because 2 x 16 = <<2*16=32>>32\nIn all he eats 32 + 16 = <<32+16=48>>48\n#### 48"
    assert corrupt(question, annotated, 0, 33) == (
        "He eats 33 slices because 2 x 16 = <<2*16=33>>33\nIn all he eats 33 + 16 = <<33+16=49>>49\n#### 49"
    )
    farm = "The farm has 1,000 + 200 = <<1000+200=1200>>1,200 hens.\nHalf is 1,200/2 = <<1200/2=600>>600.\n#### 600"
    assert corrupt("A farm has 1,000 hens and buys 200.", farm, 0, 1300) == (
        "The farm has 1,000 + 200 = <<1000+200=1300>>1,300 hens.\nHalf is 1,300/2 = <<1300/2=650>>650.\n#### 650"
    )


def test_invalid_corruptions_are_refused():
    cookies = "He has 10 + 2 = <<10+2=12>>12 cookies.\nEach of 4 friends gets 12/4 = <<12/4=3>>3 cookies.\n#### 3"
    assert corrupt("He has 10 cookies and bakes 2.", cookies, 0, 13) is None  # 13/4 is not a whole number
    assert corrupt("He has 10 cookies and bakes 2.", cookies, 0, 16).endswith("16/4 = <<16/4=4>>4 cookies.\n#### 4")
    # 12 is both in the question and an operand later: a later 12 could mean either.
    pens = "Bo has 3*4 = <<3*4=12>>12 pens.\nTogether they have 12+12 = <<12+12=24>>24 pens.\n#### 24"
    assert corrupt("Ann has 12 pens. Bo has 3 boxes of 4 pens.", pens, 0, 13) is None
    assert corrupt("Ann has 12 pens. Bo has 3 boxes of 4 pens.", pens, 1, 25).endswith("#### 25")
    # A later line with an equation the calculator did not annotate cannot be recomputed.
    heights = "Zora is 64-8 = <<64-8=56>>56 inches tall.\nIta is 56+4 = 60 inches tall.\n#### 60"
    assert corrupt("Zara is 64 inches tall.", heights, 0, 57) is None
    # Negative results are refused.
    left = "She has 5-3 = <<5-3=2>>2 left.\nShe eats 2-1 = <<2-1=1>>1.\n#### 1"
    assert corrupt("She has 5 apples.", left, 0, 0) is None
    assert parse_annotated("q", "It is <<2**3=8>>8\n#### 8") is None


def test_corrupt_gold_on_handwritten_file(tmp_path):
    records = [
        {"question": "Natalia sold clips to 48 of her friends in April, and half as many in May.", "answer": NATALIA},
        {"question": "How much is 3 and 4?", "answer": "It is 7.\n#### 7"},
        {"question": "What is 2 cubed?", "answer": "It is 2**3 = <<2**3=8>>8\n#### 8"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    skipped = Counter()
    trajectories, pairs = corrupt_gold(path, n_per_problem=3, seed=0, skipped=skipped)
    assert skipped == Counter({"no annotations": 1, "unparseable annotation": 1})
    gold, *bad = trajectories
    assert gold.id == "gsm8k-train-0-gold" and gold.group == "gsm8k-train-0" and gold.label == 1
    assert 1 <= len(bad) <= 3 and len({t.completion for t in bad}) == len(bad)
    assert [(p.chosen, p.rejected) for p in pairs] == [(gold.id, t.id) for t in bad]
    for t in bad:
        assert t.group == gold.group and t.label == 0 and t.answer != gold.answer
        assert t.completion == gold_completion(t.meta["annotated"])


# ---------------------------------------------------------------- gold corruption on real data


def annotations(text: str) -> list[tuple[str, Fraction, Fraction | None]]:
    """(expression, stated result, number printed after it) of every annotation."""
    out = []
    for m in ANNOTATION.finditer(text):
        shown = NUMBER.match(text, m.end())
        out.append((m.group(1), Fraction(m.group(2).strip()), Fraction(shown.group().replace(",", "")) if shown else None))
    return out


def test_corrupt_gold_on_real_train_problems(data_dir, tmp_path):
    path = data_dir / "gsm8k" / "train.jsonl"
    skipped = Counter()
    trajectories, pairs = corrupt_gold(path, n_per_problem=2, seed=0, limit=200, skipped=skipped)
    by_id = {t.id: t for t in trajectories}
    gold_text = {f"gsm8k-train-{i}": a for i, _, a in gold_records(path) if i < 200}
    n_gold = sum(t.label == 1 for t in trajectories)
    assert n_gold + sum(skipped.values()) == 200
    assert n_gold >= 160, skipped  # most problems admit a corruption
    assert len(pairs) == sum(t.label == 0 for t in trajectories) >= n_gold
    for pair in pairs:
        gold, bad = by_id[pair.chosen], by_id[pair.rejected]
        assert gold.group == bad.group and gold.prompt == bad.prompt and (gold.label, bad.label) == (1, 0)
        annotated = bad.meta["annotated"]
        assert bad.completion == gold_completion(annotated) and "<<" not in bad.completion
        # The final answer changes, in the text and in `answer`.
        assert bad.answer != gold.answer
        assert normalize_answer(annotated.split("####")[-1]) == bad.answer
        # Every computation except the corrupted one stays arithmetically consistent
        # (when it was so in the gold solution), and shows its result in the text.
        before, after = annotations(gold_text[gold.group]), annotations(annotated)
        assert len(before) == len(after)
        k = bad.meta["corrupted_step"]
        for j, ((old_expr, old_result, old_shown), (expr, result, shown)) in enumerate(zip(before, after)):
            if j < k:
                assert (expr, result) == (old_expr, old_result)
            elif j == k:
                assert expr == old_expr and result == bad.meta["wrong_value"] != old_result == bad.meta["original_value"]
                assert evaluate_expression(expr) != result and shown == result
            elif evaluate_expression(old_expr) == old_result:
                assert evaluate_expression(expr) == result
                if old_shown == old_result:
                    assert shown == result
        # error_char is where the texts first differ.
        e = bad.error_char
        assert e == first_difference(gold.completion, bad.completion)
        assert bad.completion[:e] == gold.completion[:e] and bad.completion[e] != gold.completion[e]
    # The files written from this round-trip through the checked readers.
    from probekit.data.schema import write_pairs, write_trajectories

    write_trajectories(tmp_path / "t.jsonl", trajectories)
    write_pairs(tmp_path / "p.jsonl", pairs)
    again, _ = read_trajectories(tmp_path / "t.jsonl")
    assert again == trajectories and read_pairs(tmp_path / "p.jsonl", again) == pairs


def test_corrupt_gold_is_deterministic(data_dir):
    path = data_dir / "gsm8k" / "train.jsonl"
    assert corrupt_gold(path, seed=3, limit=30) == corrupt_gold(path, seed=3, limit=30)
    assert corrupt_gold(path, seed=3, limit=30) != corrupt_gold(path, seed=4, limit=30)


# ---------------------------------------------------------------- CLI


def test_cli_data_synth(tmp_path):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401  (registers the commands)
    from probekit_cli.app import app

    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--n-problems", "12", "--seed", "5", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    trajectories, skipped = read_trajectories(out / "trajectories.jsonl")
    assert trajectories == synth_problems(12, seed=5) and skipped == 0
    pairs = read_pairs(out / "pairs.jsonl", trajectories)
    assert summary["trajectories"] == 48 and summary["groups"] == 12 and summary["pairs"] == len(pairs) and summary["skipped"] == 0
    assert sum(summary["labels"].values()) == 48
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--min-steps", "5", "--max-steps", "3"])
    assert "--min-steps 5 is larger than --max-steps 3" in str(result.exception)


def test_cli_data_gsm8k_corrupt(tmp_path, data_dir):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401
    from probekit_cli.app import app

    out = tmp_path / "corrupt"
    args = ["data", "gsm8k-corrupt", "--input", str(data_dir / "gsm8k" / "train.jsonl"), "--out", str(out), "--limit", "40", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["groups"] + summary["skipped"] == 40 and summary["pairs"] == summary["labels"]["0"]
    assert len(read_trajectories(out / "trajectories.jsonl")[0]) == summary["trajectories"]


def test_synth_prompts_carry_gold_answers_and_worked_examples():
    from probekit.data.answers import get_parser
    from probekit.data.synth import INSTRUCTION, synth_prompts

    prompts = synth_prompts(20, min_steps=1, max_steps=2, shots=2, seed=3)
    assert prompts == synth_prompts(20, min_steps=1, max_steps=2, shots=2, seed=3)
    assert len({p.id for p in prompts}) == 20 and all(p.prompt.startswith(INSTRUCTION) for p in prompts)
    for p in prompts:
        blocks = p.prompt.strip().split("\n\n")
        assert len(blocks) == 1 + 2 + 1 and blocks[-1].startswith("Problem: ")
        for example in blocks[1:3]:  # worked examples in the solution format, with a right final answer
            steps = [line for line in example.splitlines() if line.startswith("Step")]
            last = steps[-1].rstrip(".").split("= ")[-1]
            assert get_parser("synth")(example) == last
        assert p.gold.isdigit()
    zero = synth_prompts(3, shots=0)
    assert all(p.prompt.count("Problem:") == 1 for p in zero)
