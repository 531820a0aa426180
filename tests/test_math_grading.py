"""Answer extraction and equivalence on hand-written cases (endorm.mathx.grading)."""

from __future__ import annotations

import pytest

from endorm.mathx.grading import (
    extract_answer,
    extract_boxed,
    extract_hash_answer,
    extract_last_number,
    grade,
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
    assert grade("Janet has 16-3-4=9 eggs, 9*2 = 18. The answer is 18.", gsm_gold)
    assert grade("so she makes \\boxed{\\$18}", gsm_gold)
    assert not grade("so she makes \\boxed{20}", gsm_gold)
    assert not grade("I do not know.", gsm_gold)
