"""The OOD sets' adapters (probekit.data.ood) on small local copies in each set's real format, and their fetch entries.

The records below are real records of the pinned files (the first of each, and ASDiv's first non-numeric
answers), written here rather than downloaded; malformed copies check that a bad record is one error naming
the file and the record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probekit.data import fetch
from probekit.data.ood import OOD_SETS, numeric_gold, ood_problems
from probekit.errors import ProbekitError
from tests.helpers import assert_one_line_error, files_under, run_cli
from tests.helpers import closed_port_url

GSM_HARD = [
    {"input": "A robe takes 2287720 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?",
     "code": "\ndef solution():\n    blue_fiber = 2287720\n    return blue_fiber * 1.5\n", "target": 3431580.0},
    {"input": "Kylar went to the store to buy glasses for his new apartment. How much does he need to pay for them?", "code": "", "target": 2.5},
]
MAWPS = {
    "addsub": [{"input": "Joan found 70 seashells on the beach . she gave Sam some of her seashells . She has 27 seashell . How many seashells did she give to Sam ?", "target": 43.0}],
    "singleeq": [{"input": "Joan found 70 seashells on the beach. she gave Sam some of her seashells. She has 27 seashell left. How many seashells did she give to Sam ?", "target": 43.0}],
    "singleop": [{"input": "If there are 7 bottle caps in a box and Linda puts 7 more bottle caps inside, how many bottle caps are in the box?", "target": 14.0}],
    "multiarith": [{"input": "For Halloween Debby and her sister combined the candy they received. Debby had 32 pieces of candy while her sister had 42. If they ate 35 pieces the first night, how many pieces do they have left?", "target": 39}],
}
SVAMP = [
    {"ID": "chal-1", "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
     "Question": "How much do you have to pay to buy each pack?", "Equation": "( 76.0 - 25.0 )", "Answer": 51.0, "Type": "Subtraction"},
    {"ID": "chal-2", "Body": "Dan had $ 3 left with him after he bought a candy bar. If he had $ 4 at the start",
     "Question": "How much did the candy bar cost?", "Equation": "( 4.0 - 3.0 )", "Answer": 1.0, "Type": "Subtraction"},
]
ASDIV_PROBLEM = """\t<Problem ID="{id}" Grade="1" Source="http://www.k5learning.com">
\t\t<Body>{body}</Body>
\t\t<Question>{question}</Question>
\t\t<Solution-Type>Addition</Solution-Type>
\t\t<Answer>{answer}</Answer>
\t\t<Formula>7+2=9</Formula>
\t</Problem>
"""
ASDIV = [("nluds-0001", "Seven red apples and two green apples are in the basket.", "How many apples are in the basket?", "9 (apples)"),
         ("nluds-0002", "Ellen has six more balls than Marin. Marin has nine balls.", "How many balls does Ellen have?", "15 (balls)"),
         ("nluds-0230", "Mrs. Hilt saw a rollercoaster. Which is more?", "Who ran farther?", "Mrs. Hilt"),
         ("nluds-0555", "The movie starts at 2:00 p.m. and lasts 90 minutes.", "When does it end?", "3:30 p.m."),
         ("nluds-1000", "A recipe needs 3 cups for 4 cakes.", "How many cups for one cake?", "3/4 (cups)")]
ALGEBRA222 = ('question,final_answer,section,source\n'
              'Suppose that the value of x is \u22124. What is the value of the expression (3x \u2212 5) + x?,-21,"Expressions, Relations, and Substitution",\n'
              '"The size of a compressed file is 1.74 MiB, while the size of the original uncompressed file is 5.5 times greater. '
              'What is the size of the uncompressed file, in MiB?",9.57,Translation,\n')


def asdiv_xml(problems) -> str:
    body = "".join(ASDIV_PROBLEM.format(id=i, body=b, question=q, answer=a) for i, b, q, a in problems)
    return f'<?xml version="1.0" encoding="UTF-8" ?>\n<Machine-Reading-Corpus-File>\n\n<ProblemSet>\n{body}</ProblemSet>\n</Machine-Reading-Corpus-File>\n'


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def ood_dir(tmp_path) -> Path:
    """A data folder in the `probekit data fetch` layout holding a few real records of each set."""
    root = tmp_path / "data"
    files = {"gsm_hard/gsmhardv2.jsonl": jsonl(GSM_HARD), "svamp/SVAMP.json": json.dumps(SVAMP, indent=4),
             "asdiv/ASDiv.xml": asdiv_xml(ASDIV), "algebra222/algebra222.csv": ALGEBRA222,
             **{f"mawps/{name}.jsonl": jsonl(records) for name, records in MAWPS.items()}}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_each_set_gives_its_questions_and_numeric_answers(ood_dir):
    got = {name: ood_problems(name, ood_dir) for name in OOD_SETS}
    hard = got["gsm-hard"].prompts
    assert [(p.id, p.gold) for p in hard] == [("gsm-hard-0", "3431580"), ("gsm-hard-1", "2.5")]
    assert hard[0].prompt == GSM_HARD[0]["input"]
    svamp = got["svamp"].prompts
    assert [(p.id, p.gold) for p in svamp] == [("svamp-chal-1", "51"), ("svamp-chal-2", "1")]
    # NeMo-Skills' join: the body gets its missing full stop, then the question
    assert svamp[0].prompt == "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. How much do you have to pay to buy each pack?"
    mawps = got["mawps"].prompts
    assert [(p.id, p.gold) for p in mawps] == [("mawps-addsub-0", "43"), ("mawps-singleeq-0", "43"), ("mawps-singleop-0", "14"),
                                               ("mawps-multiarith-0", "39")]
    assert [(p.id, p.gold) for p in got["algebra222"].prompts] == [("algebra222-0", "-21"), ("algebra222-1", "9.57")]
    assert got["algebra222"].prompts[0].prompt.startswith("Suppose that the value of x is \u22124.")
    assert all(not p.skipped for name, p in got.items() if name != "asdiv")


def test_gsm_hard_float_golds_grade_a_rounded_answer(tmp_path):
    """gsm-hard's targets are the Python floats its programs return (hand-written records in its format here): a
    solution's rounded decimal grades correct within the official grader's relative 1e-4, a coarser one does not."""
    from probekit.data.answers import get_parser, grade

    root = tmp_path / "data"
    (root / "gsm_hard").mkdir(parents=True)
    records = [{"input": "40 pies are shared by 3 friends. How many pies does each get?", "target": 40 / 3},
               {"input": "A rope of 7 m is cut into 2 equal parts. How long is each?", "target": 3.5}]
    (root / "gsm_hard" / "gsmhardv2.jsonl").write_text(jsonl(records), encoding="utf-8")
    golds = [p.gold for p in ood_problems("gsm-hard", root).prompts]
    assert golds == ["13.333333333333334", "3.5"]
    parse = get_parser("gsm8k")
    graded = [grade(parse(text), golds[0]) for text in ("40 / 3 = 13.3333\n#### 13.3333", "Each gets 13.33 pies.", "#### 13")]
    assert graded == [1, 0, 0]
    assert [grade(parse(text), golds[1]) for text in ("#### 3.50", "#### 3.5000001", "#### 4")] == [1, 1, 0]


def test_asdiv_counts_the_answers_that_are_not_numbers(ood_dir):
    asdiv = ood_problems("asdiv", ood_dir)
    assert [(p.id, p.gold) for p in asdiv.prompts] == [("asdiv-nluds-0001", "9"), ("asdiv-nluds-0002", "15"), ("asdiv-nluds-1000", "3/4")]
    assert asdiv.prompts[0].prompt == "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    assert asdiv.skipped == {"non-numeric answer": 2}  # "Mrs. Hilt" and "3:30 p.m."
    assert asdiv.to_json() == {"name": "asdiv", "problems": 3, "skipped": {"non-numeric answer": 2}}


@pytest.mark.parametrize("value, expected", [(43.0, "43"), ("9 ", "9"), (-9867630.0, "-9867630"), (2.5, "2.5"), ("3/4", "3/4"),
                                             ("1,080", "1080"), ("Yes", None), ("5:45", None)])
def test_numeric_gold(value, expected):
    assert numeric_gold(value, "f:1") == expected


@pytest.mark.parametrize("value", [True, None, [1], float("nan"), " "])
def test_numeric_gold_refuses_what_is_not_an_answer(value):
    with pytest.raises(ProbekitError, match="^f:1: "):
        numeric_gold(value, "f:1")


def _rewrite(root: Path, rel: str, text: str) -> Path:
    (root / rel).write_text(text, encoding="utf-8")
    return root / rel


@pytest.mark.parametrize("name, rel, text, needle", [
    ("gsm-hard", "gsm_hard/gsmhardv2.jsonl", jsonl(GSM_HARD) + '{"input": "no target"}\n', "gsmhardv2.jsonl:3: missing field 'target'"),
    ("gsm-hard", "gsm_hard/gsmhardv2.jsonl", jsonl(GSM_HARD[:1]) + '{"input": 5, "target": 1}\n', "gsmhardv2.jsonl:2: missing, empty or non-string field 'input'"),
    ("gsm-hard", "gsm_hard/gsmhardv2.jsonl", '{"input": "q", "target": true}\n', "gsmhardv2.jsonl:1: the answer must be a number or text, got bool"),
    ("gsm-hard", "gsm_hard/gsmhardv2.jsonl", jsonl(GSM_HARD) + "{not json\n", "gsmhardv2.jsonl:3: malformed JSON"),
    ("mawps", "mawps/singleop.jsonl", '{"input": "q", "target": NaN}\n', "singleop.jsonl:1: the answer is not a finite number"),
    ("svamp", "svamp/SVAMP.json", json.dumps(SVAMP + [{"ID": "chal-3", "Body": "x", "Question": "y"}]), "SVAMP.json: record 2 (ID chal-3): missing field 'Answer'"),
    ("svamp", "svamp/SVAMP.json", json.dumps(SVAMP + [{"ID": "chal-3", "Body": "", "Question": "y", "Answer": 1}]), "record 2 (ID chal-3): missing, empty or non-string field 'Body'"),
    ("svamp", "svamp/SVAMP.json", json.dumps(SVAMP + [SVAMP[0]]), "SVAMP.json: record 2 (ID chal-1): duplicate id 'chal-1'"),
    ("svamp", "svamp/SVAMP.json", json.dumps({"ID": "chal-1"}), "SVAMP.json: expected a JSON array of problems, got dict"),
    ("svamp", "svamp/SVAMP.json", json.dumps(SVAMP)[:-5], "SVAMP.json: malformed JSON"),
    ("asdiv", "asdiv/ASDiv.xml", asdiv_xml(ASDIV[:1] + [("nluds-0003", "Body.", "", "4")]), "ASDiv.xml: problem 1 (ID nluds-0003): missing, empty or non-string field 'Question'"),
    ("asdiv", "asdiv/ASDiv.xml", asdiv_xml(ASDIV[:1]).replace("</Problem>", "", 1), "ASDiv.xml: malformed XML"),
    ("algebra222", "algebra222/algebra222.csv", ALGEBRA222 + "A question without an answer?,,Translation,\n", "algebra222.csv:4: missing, empty or non-string field 'final_answer'"),
    ("algebra222", "algebra222/algebra222.csv", "problem,answer\nq,1\n", "algebra222.csv: expected a CSV with columns 'question' and 'final_answer'"),
])
def test_a_malformed_record_names_its_file_and_record(ood_dir, name, rel, text, needle):
    _rewrite(ood_dir, rel, text)
    with pytest.raises(ProbekitError) as exc:
        ood_problems(name, ood_dir)
    message = str(exc.value)
    assert needle in message and "\n" not in message and str(ood_dir) in message


def test_a_missing_file_or_an_unknown_set_is_one_error(ood_dir, tmp_path):
    with pytest.raises(ProbekitError, match="file not found"):
        ood_problems("svamp", tmp_path / "empty")
    with pytest.raises(ProbekitError, match="unknown OOD set 'math500'"):
        ood_problems("math500", ood_dir)
    _rewrite(ood_dir, "asdiv/ASDiv.xml", asdiv_xml(ASDIV[2:4]))  # only non-numeric answers: nothing to evaluate
    with pytest.raises(ProbekitError, match="ASDiv.xml: no problem with a numeric answer"):
        ood_problems("asdiv", ood_dir)


def test_every_file_an_adapter_reads_is_fetched_under_the_same_name():
    for name, parts in OOD_SETS.items():
        fetched = {f.path for f in fetch.DATASETS[name]}
        assert {p.file for p in parts} <= fetched, name
        for f in fetch.DATASETS[name]:  # pinned: a URL at a 40-hex commit, a sha256, a size
            commit = f.url.split("/")[5]
            assert len(commit) == 40 and int(commit, 16) >= 0 and len(f.sha256) == 64 and f.size > 0, f


def test_fetching_an_ood_set_offline_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    code, err = run_cli(monkeypatch, capsys, "data", "fetch", "svamp", "asdiv", "--mirror", closed_port_url(), "--no-progress")
    assert_one_line_error(code, err, "svamp/SVAMP.json: cannot download", "--data-dir DIR")
    assert files_under(tmp_path / "cache") == []


def test_fetched_copies_are_read_by_the_adapters(monkeypatch, capsys, tmp_path, ood_dir):
    """`data fetch` from a mirror of the planted copies (pinned to their own bytes) places files the adapters read."""
    from tests.helpers import sha256

    for name in OOD_SETS:
        files = tuple(fetch.DataFile(p.file, "unused", sha256((ood_dir / p.file).read_bytes()), (ood_dir / p.file).stat().st_size)
                      for p in OOD_SETS[name])
        monkeypatch.setitem(fetch.DATASETS, name, files)
    root = tmp_path / "fetched"
    done = fetch.fetch_datasets(list(OOD_SETS), root, mirror=ood_dir.as_uri())
    assert {d.status for d in done} == {"downloaded"} and len(done) == 8
    assert [p.id for p in ood_problems("mawps", root).prompts] == [p.id for p in ood_problems("mawps", ood_dir).prompts]
