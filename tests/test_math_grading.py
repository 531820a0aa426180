"""Answer extraction and equivalence on hand-written cases (endorm.mathx.grading): grading is math-verify's
(checked to be the path taken), with endorm's own grader as the fallback where math-verify cannot run.

Every expectation in the tables below held for endorm's own grader and holds unchanged with math-verify
(none needed adjusting); "18 dollars" and "4.5e33" hold because the two spellings math-verify misreads are
rewritten before it sees them. The cases where the two graders differ are in MATH_VERIFY_DECIDES."""

from __future__ import annotations

import threading

import pytest

from endorm.mathx import grading
from endorm.mathx.grading import (
    equiv_verdict,
    extract_answer,
    extract_boxed,
    extract_hash_answer,
    extract_last_number,
    fallback_grade,
    fallback_is_equiv,
    grade,
    grade_verdict,
    is_equiv,
    normalize_answer,
    parse_number,
)

# (completion text, expected extracted answer)
EXTRACT_CASES = [
    (r"so the answer is $\boxed{42}$.", "42"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3} then corrected: \boxed{5}", "5"),
    (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"nested \boxed{\sqrt{\frac{a}{b}}} end", r"\sqrt{\frac{a}{b}}"),
    (r"\fbox{7}", "7"),
    (r"The result: \boxed 9", "9"),
    ("Janet sells 9 eggs.\n#### 18", "18"),
    ("step one\n#### 1,234\n", "1,234"),
    ("We get 3 apples and then 4 more, so 7 apples.", "7"),
    ("It costs -2.5 dollars", "-2.5"),
    ("The answer is 12.", "12"),
    ("Therefore, the answer is: 3/4", "3/4"),
    ("no digits here at all", None),
    ("", None),
    (r"text \boxed{x^2 + 1} more 5", "x^2 + 1"),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_helpers_individually():
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_boxed("nothing") is None
    assert extract_hash_answer("no hashes") is None
    assert extract_hash_answer("a\n#### 72\nextra") == "72"
    assert extract_last_number("1, 2, and 3.") == "3"
    assert extract_last_number("total 1,000 items") == "1,000"


# (prediction, gold, equivalent?)
EQUIV_CASES = [
    ("42", "42", True),
    ("42.0", "42", True),
    ("042", "42", True),
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("$18", "18", True),
    ("\\$18.00", "18", True),
    ("18 dollars", "18", True),
    ("5 \\text{ cm}", "5", True),
    ("90^\\circ", "90", True),
    ("50\\%", "50", True),
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "\\frac12", True),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
    ("0.333", "\\frac{1}{3}", False),  # beyond the 1e-4 relative tolerance
    ("0.33333333", "\\frac{1}{3}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("x = 7", "7", True),
    ("p - q", "p-q", True),
    ("-q + p", "p - q", True),
    ("2x+2", "2(x+1)", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(1, 2)", "(2, 1)", False),
    ("[1, 2)", "(1, 2)", False),
    ("1, 2, 3", "1,2,3", True),
    ("1, 2", "1, 2, 3", False),
    ("41", "42", False),
    ("-5", "5", False),
    ("12.5", "12.50", True),
    (".5", "0.5", True),
    ("3\\pi", "3 \\pi", True),
    ("\\text{(B)}", "(B)", True),
    ("\\text{Evelyn}", "Evelyn", True),
    ("Evelyn", "Bob", False),
    ("10^{3}", "1000", True),
    ("e^{2}", "e^2", True),
    ("", "5", False),
    (None, "5", False),
    ("5", None, False),
    (27, "27.0", True),
    ("27", 27.0, True),
    ("1.6", "1.6", True),
    ("4.5e33", "4.5 \\times 10^{33}", True),
    ("\\frac{1}{0}", "1", False),
]


@pytest.mark.parametrize("pred,gold,expected", EQUIV_CASES)
def test_is_equiv(pred, gold, expected):
    assert is_equiv(pred, gold) is expected
    v = equiv_verdict(pred, gold)
    assert v.grader == ("none" if pred in (None, "") or gold is None else "math-verify"), v
    if v.grader == "math-verify":
        assert fallback_is_equiv(pred, gold) is expected  # the old grader agreed on every case here


# (prediction, gold, math-verify's verdict, endorm's own grader's): math-verify is right each time
MATH_VERIFY_DECIDES = [
    ("\\{1, 2\\}", "\\{2, 1\\}", True, False),  # a set has no order
    ("x \\in [1, 2]", "[1, 2]", True, False),
    ("(-\\infty, 3]", "x \\le 3", True, False),  # an interval and the inequality that defines it
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True, False),
    ("3 \\text{ or } 5", "3, 5", True, False),
]


@pytest.mark.parametrize("pred,gold,mv,ours", MATH_VERIFY_DECIDES)
def test_math_verify_decides_where_the_graders_differ(pred, gold, mv, ours):
    assert fallback_is_equiv(pred, gold) is ours
    assert equiv_verdict(pred, gold) == grading.Verdict(mv, "math-verify")
    assert is_equiv(pred, gold) is mv
    assert grade(f"so the answer is $\\boxed{{{pred}}}$.", gold) is mv


def test_math_verify_functions_are_the_ones_called(monkeypatch):
    import math_verify

    calls = {"parse": 0, "verify": 0}
    real_parse, real_verify = math_verify.parse, math_verify.verify

    def parse(*a, **k):
        calls["parse"] += 1
        return real_parse(*a, **k)

    def verify(*a, **k):
        calls["verify"] += 1
        return real_verify(*a, **k)

    monkeypatch.setattr(math_verify, "parse", parse)
    monkeypatch.setattr(math_verify, "verify", verify)
    grading._mv_parse_answer.cache_clear()
    assert grade("We find $x = \\frac{7}{3}$, so \\boxed{\\frac{14}{6}}", "\\frac73")
    assert calls == {"parse": 2, "verify": 1}
    assert not is_equiv("2.5", "\\frac73")
    assert calls == {"parse": 3, "verify": 2}  # the reference's parse is cached


def test_fallback_where_math_verify_extracts_nothing():
    v = grade_verdict("\\fbox{7}", "7")
    assert v == grading.Verdict(True, "fallback", "math-verify extracted nothing from the completion")
    assert not grade_verdict("\\fbox{8}", "7").correct


def test_fallback_when_math_verify_raises_or_times_out(monkeypatch):
    import math_verify
    from math_verify.errors import TimeoutException

    def boom(*a, **k):
        raise RuntimeError("broken")

    def slow(*a, **k):
        raise TimeoutException("Operation timed out!")

    grading._mv_parse_answer.cache_clear()
    monkeypatch.setattr(math_verify, "verify", boom)
    v = equiv_verdict("0.5", "\\frac12")
    assert v == grading.Verdict(True, "fallback", "math-verify raised comparing: RuntimeError")
    monkeypatch.setattr(math_verify, "verify", slow)
    assert grade_verdict("x = 41", "42") == grading.Verdict(False, "fallback", "math-verify timed out comparing")
    monkeypatch.setattr(math_verify, "parse", slow)
    grading._mv_parse_answer.cache_clear()
    v = grade_verdict("so \\boxed{42}", "42")
    assert v == grading.Verdict(True, "fallback", "math-verify timed out parsing the reference")
    grading._mv_parse_answer.cache_clear()


def test_fallback_off_the_main_thread():
    out = {}
    t = threading.Thread(target=lambda: out.update(v=grade_verdict("so \\boxed{\\{2, 1\\}}", "\\{1, 2\\}")))
    t.start()
    t.join(timeout=60)
    assert out["v"].grader == "fallback" and "main thread" in out["v"].reason
    assert out["v"].correct is False  # the fallback's ordered reading, not math-verify's set
    assert grade_verdict("so \\boxed{\\{2, 1\\}}", "\\{1, 2\\}") == grading.Verdict(True, "math-verify")


def test_rewrites_before_math_verify():
    assert grading._answer_for_math_verify("4.5e33") == "\\boxed{4.5\\times10^{33}}"
    assert grading._answer_for_math_verify("$18 dollars.$") == "\\boxed{18}"
    assert grading._answer_for_math_verify("3 x") == "\\boxed{3 x}"  # only a unit word is taken off
    assert grading._answer_for_math_verify(27.0) == "\\boxed{27}"
    assert grade("the mass is \\boxed{6e24} kg", "6 \\times 10^{24}")
    # GSM8K's answer line (test solution 227): math-verify alone would take 33.333 from the line before
    gsm = "32 / 96 * 100% = 33.333...%, which rounds down to 33%\n#### 33"
    assert grade_verdict(gsm, "33") == grading.Verdict(True, "math-verify")
    assert grading._completion_for_math_verify(gsm) == "\\boxed{33}"
    assert grading._completion_for_math_verify("\\boxed{5}\n#### 4") == "\\boxed{5}\n#### 4"  # its own box wins
    assert not grade("the mass is \\boxed{6e25} kg", "6 \\times 10^{24}")


def test_table_is_large_enough():
    assert len(EXTRACT_CASES) + len(EQUIV_CASES) >= 40


def test_normalize_and_parse():
    assert normalize_answer("\\$1,234.50.") == "1234.5"
    assert normalize_answer(" $ \\boxed $ ") != ""
    assert parse_number("\\frac{3}{4}") == pytest.approx(0.75)
    assert parse_number("-\\frac{1}{4}") == pytest.approx(-0.25)
    assert parse_number("7/0") is None
    assert parse_number("abc") is None
    assert parse_number(3) == 3.0


def test_grade_end_to_end():
    gsm_gold = extract_answer("She makes 9 * 2 = $18 every day.\n#### 18")
    assert gsm_gold == "18"
    for text, ok in [("Janet has 16-3-4=9 eggs, 9*2 = 18. The answer is 18.", True),
                     ("so she makes \\boxed{\\$18}", True), ("Janet sells 9 eggs.\n#### 18", True),
                     ("so she makes \\boxed{20}", False), ("I do not know.", False)]:
        assert grade(text, gsm_gold) is ok
        assert fallback_grade(text, gsm_gold) is ok
    assert grade_verdict("so she makes \\boxed{20}", gsm_gold).grader == "math-verify"
    # a number only, no answer: math-verify finds nothing, nor does the fallback
    assert grade_verdict("I do not know.", gsm_gold) == grading.Verdict(
        False, "fallback", "math-verify extracted nothing from the completion")
