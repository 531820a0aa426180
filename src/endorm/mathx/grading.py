"""Final-answer grading for math benchmarks: Hugging Face's math-verify, with endorm's own grader as the
fallback where math-verify cannot run.

``grade(completion, gold)`` is math-verify's: ``math_verify.parse`` extracts the answer from the completion
(its LaTeX and expression extraction: ``\\boxed{}``, "final answer is", the last expression or number) and
from the reference (given ``\\boxed{...}``), and ``math_verify.verify(gold, pred)`` compares them
(strings, numbers rounded to 6 decimals, sympy, sets, intervals, relations, matrices). ``is_equiv(pred,
gold)`` does the same for an already extracted answer. Three things math-verify reads wrongly are
rewritten before it sees them: e-notation (``4.5e33`` -> ``4.5\\times10^{33}``; it reads ``e`` as Euler's
number); in answers, a unit word after a number (``18 dollars`` -> ``18``; it reads a product of
symbols); in a completion without a box, GSM8K's ``#### N`` answer line becomes ``\\boxed{N}`` (its
extraction does not know the marker and took another number in 4 of GSM8K's 1319 test solutions).

The fallback (``fallback_is_equiv``, ``fallback_grade``) decides only where math-verify cannot: it raised,
it hit its time limit (5 s to parse, 5 s to compare), it extracted nothing from the completion or the
reference (e.g. ``\\fbox{7}``), or the call is not on the main thread (math-verify's time limit is
SIGALRM). ``grade_verdict`` / ``equiv_verdict`` say which grader decided and why.

The fallback: extraction in order of preference: the last ``\\boxed{...}`` (or ``\\fbox{...}``), the
text after the last ``####`` (GSM8K), a sentence "the answer is X", and finally the last number in the
text. Both sides are normalised (LaTeX wrappers, ``\\text{}``, units in text, ``$``, degree signs,
thousands separators, ``\\dfrac`` ...), compared as strings, then as numbers with a relative tolerance,
then symbolically with sympy after a small LaTeX-to-sympy translation; tuples/intervals and
comma-separated lists element by element (in order). A pragmatic grader in the style of the Qwen2.5-Math
/ PRIME evaluation scripts, not a full LaTeX parser: matrices, set-builder notation and units with
conversions are out of scope. ``extract_answer`` (this extraction) also gives the ``predictions`` that
``endorm math-eval`` records and the majority-vote reward's keys.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "extract_boxed",
    "extract_hash_answer",
    "extract_last_number",
    "extract_answer",
    "normalize_answer",
    "parse_number",
    "Verdict",
    "equiv_verdict",
    "grade_verdict",
    "is_equiv",
    "grade",
    "fallback_is_equiv",
    "fallback_grade",
]

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _match_brace(text: str, start: int) -> int | None:
    """Index just past the ``}`` that closes the ``{`` at ``text[start]``; None if unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def extract_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced), or ``\\boxed 5``."""
    if not text:
        return None
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    name_len = len("\\boxed") if rest.startswith("\\boxed") else len("\\fbox")
    after = rest[name_len:]
    if after.startswith(" ") and not after.lstrip().startswith("{"):
        # "\boxed 5" form: up to the next whitespace or "$"
        m = re.match(r"\s+([^\s$]+)", after)
        return m.group(1).rstrip(".") if m else None
    brace = rest.find("{", name_len)
    if brace < 0 or rest[name_len:brace].strip():
        return None
    end = _match_brace(rest, brace)
    if end is None:
        return None
    return rest[brace + 1 : end - 1].strip()


def extract_hash_answer(text: str) -> str | None:
    """The text after the last ``####`` up to the end of that line (GSM8K's reference format)."""
    if not text or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    line = tail.splitlines()[0].strip() if tail else ""
    return line or None


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` (thousands separators kept for ``parse_number``), or None."""
    if not text:
        return None
    nums = _NUMBER_RE.findall(text)
    if not nums:
        return None
    return nums[-1].rstrip(",")


_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """Best-effort final answer from a model completion or a reference solution (see module doc)."""
    if text is None:
        return None
    text = str(text)
    for fn in (extract_boxed, extract_hash_answer):
        ans = fn(text)
        if ans:
            return ans
    matches = _ANSWER_IS_RE.findall(text)
    if matches:
        cand = matches[-1].strip().split("\n")[0]
        cand = re.sub(r"^\$+|\$+\.?$", "", cand.strip()).strip().rstrip(".")
        num = extract_last_number(cand) if not re.search(r"\\|[a-zA-Z]{2,}", cand) else None
        if cand and len(cand) <= 40 and re.search(r"\\|[\d]", cand):
            return cand if num is None else num
    return extract_last_number(text)


# --------------------------------------------------------------------------------------------- normalise

_UNIT_WORDS = (
    "degrees|degree|cm|centimeters|meters|meter|m|km|kilometers|inches|inch|feet|foot|ft|units|unit|"
    "dollars|dollar|cents|cent|hours|hour|minutes|minute|seconds|second|days|day|sq|square|mph|miles|mile|"
    "pounds|pound|kg|grams|gram|g|years|year|points|point|students|people|apples"
)


def _strip_text_macros(s: str) -> str:
    # \text{...}, \textbf{...}, \mathrm{...}, \mbox{...} -> contents
    for _ in range(5):
        new = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", s)
        if new == s:
            break
        s = new
    return s


def normalize_answer(ans: str | float | int | None) -> str:
    """Canonical string for comparison: no ``$``, spacing, ``\\left``/``\\right``, units or trailing period."""
    if ans is None:
        return ""
    if isinstance(ans, (int, float)) and not isinstance(ans, bool):
        f = float(ans)
        return str(int(f)) if f.is_integer() else repr(f)
    s = str(ans).strip()
    s = s.replace("\n", " ").strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = s.replace("\\$", "")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\displaystyle", "")
    s = _strip_text_macros(s)
    # a leading "x =" / "k=" assignment
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", s)
    # trailing unit words (only after something numeric-looking)
    s = re.sub(rf"(?<=[\d}}])\s*(?:{_UNIT_WORDS})(?:\^?\{{?\d\}}?)?\.?$", "", s)
    s = s.strip().rstrip(".").strip()
    # thousands separators: 1,000,000 -> 1000000 (only full groups of three digits)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"\s+", "", s)
    # \frac12 -> \frac{1}{2}; \sqrt2 -> \sqrt{2}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    # 0.50 -> 0.5, 5.0 -> 5, .5 -> 0.5
    if re.fullmatch(r"-?\d*\.\d+", s):
        if s.startswith("."):
            s = "0" + s
        elif s.startswith("-."):
            s = "-0" + s[1:]
        s = s.rstrip("0").rstrip(".") if "." in s else s
    return s


def parse_number(s: str | float | int | None) -> float | None:
    """A float for plain numbers, ``a/b``, ``\\frac{a}{b}``, percentages and ``1,234``; None otherwise."""
    if s is None:
        return None
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        return float(s)
    t = normalize_answer(s)
    if not t:
        return None
    t = t.replace(",", "") if re.fullmatch(r"-?[\d,]+(?:\.\d+)?", t) else t
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", t)
    if m:
        den = float(m.group(3))
        if den == 0:
            return None
        val = float(m.group(2)) / den
        return -val if m.group(1) else val
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)/(-?\d+(?:\.\d+)?)", t)
    if m:
        den = float(m.group(2))
        return None if den == 0 else float(m.group(1)) / den
    try:
        val = float(t)
    except ValueError:
        return None
    return val if math.isfinite(val) else None


# --------------------------------------------------------------------------------------------- sympy


def _latex_to_sympy_str(s: str) -> str:
    """Translate the common LaTeX subset to a string ``sympy.parse_expr`` understands."""
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    s = s.replace("\\pi", "pi").replace("\\infty", "oo").replace("\\ln", "log").replace("\\log", "log")
    for fn in ("sin", "cos", "tan", "cot", "sec", "csc", "exp"):
        s = s.replace("\\" + fn, fn)
    # \frac{a}{b} and \sqrt[n]{x} / \sqrt{x}, innermost first
    for _ in range(10):
        new = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        new = re.sub(r"\\sqrt\[([^{}\[\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", new)
        new = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", new)
        if new == s:
            break
        s = new
    s = s.replace("^", "**").replace("{", "(").replace("}", ")")
    s = s.replace("\\", "")
    return s


@lru_cache(maxsize=4096)
def _to_sympy(s: str):
    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    if not s or len(s) > 200 or re.search(r"[=<>]|\\(?:begin|cup|cap|in|le|ge|pm|mp)\b", s):
        return None
    expr_str = _latex_to_sympy_str(s)
    if re.search(r"[^\w\s+\-*/().,]", expr_str):
        return None
    try:
        transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
        expr = parse_expr(expr_str, transformations=transformations, evaluate=True)
    except Exception:  # noqa: BLE001 - anything the parser cannot read is simply "not symbolic"
        return None
    return expr if isinstance(expr, sympy.Basic) else None


def _sympy_equal(a: str, b: str) -> bool:
    import sympy

    ea, eb = _to_sympy(a), _to_sympy(b)
    if ea is None or eb is None:
        return False
    try:
        diff = sympy.simplify(ea - eb)
        if diff == 0:
            return True
        if not diff.free_symbols:
            val = complex(sympy.N(diff))
            return abs(val) < 1e-8
    except Exception:  # noqa: BLE001
        return False
    return False


# --------------------------------------------------------------------------------------------- compare


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside any bracket."""
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _numbers_close(x: float, y: float, rel_tol: float) -> bool:
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)


def _scalar_equiv(a: str, b: str, rel_tol: float) -> bool:
    if a == b:
        return True
    x, y = parse_number(a), parse_number(b)
    if x is not None and y is not None:
        return _numbers_close(x, y, rel_tol)
    return _sympy_equal(a, b)


def fallback_is_equiv(pred: str | float | int | None, gold: str | float | int | None, rel_tol: float = 1e-4) -> bool:
    """endorm's own equivalence of a predicted final answer and the reference (see the module doc)."""
    if pred is None or gold is None:
        return False
    raw_p, raw_g = str(pred), str(gold)
    p, g = normalize_answer(pred), normalize_answer(gold)
    if not p or not g:
        return False
    if p == g:
        return True
    pct = "%" in raw_p or "%" in raw_g
    # tuples / intervals / lists: same brackets (where given) and elementwise equality
    if "," in p or "," in g:
        bp, bg = p[:1] + p[-1:], g[:1] + g[-1:]
        inner_p = p[1:-1] if bp in ("()", "[]", "{}") else p
        inner_g = g[1:-1] if bg in ("()", "[]", "{}") else g
        if bp in ("()", "[]") and bg in ("()", "[]") and bp != bg:
            return False  # open vs closed interval
        ps, gs = _split_top_level(inner_p), _split_top_level(inner_g)
        if len(ps) != len(gs) or len(ps) < 2:
            return False
        return all(_scalar_equiv(x, y, rel_tol) for x, y in zip(ps, gs, strict=True))
    if pct:
        x, y = parse_number(p), parse_number(g)
        if x is not None and y is not None:
            return _numbers_close(x, y, rel_tol) or _numbers_close(x * 100, y, rel_tol) or _numbers_close(
                x, y * 100, rel_tol
            )
    return _scalar_equiv(p, g, rel_tol)


def fallback_grade(completion: str, gold: str | float | int | None, rel_tol: float = 1e-4) -> bool:
    """endorm's own grading: ``extract_answer`` on the completion, then ``fallback_is_equiv``."""
    return fallback_is_equiv(extract_answer(completion), gold, rel_tol=rel_tol)


# --------------------------------------------------------------------------------------------- math-verify

MATH_VERIFY = "math-verify"
FALLBACK = "fallback"
NOTHING = "none"  # no prediction or no reference: wrong, nothing to compare
TIMEOUT_S = 5  # math-verify's own default, for parsing and for comparing


@dataclass(frozen=True)
class Verdict:
    """A grading decision: ``correct``, the ``grader`` that decided (``"math-verify"``, ``"fallback"``, or
    ``"none"`` when there was nothing to compare) and, for the fallback, why math-verify could not."""

    correct: bool
    grader: str
    reason: str | None = None


class _CannotRun(Exception):
    """math-verify cannot decide this case; the message is the reason."""


_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_NUMBER_WITH_UNIT = re.compile(rf"^(-?[\d,]*\.?\d+)\s+(?:{_UNIT_WORDS})\.?$")


def _rewrite_e_notation(text: str) -> str:
    return _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{int(m.group(2))}}}", text)


def _answer_for_math_verify(ans: str | float | int) -> str:
    """A bare final answer as math-verify reads one: without ``$`` delimiters or a trailing unit word, in
    ``\\boxed{}`` (a bare string would go through its sentence extraction instead)."""
    if isinstance(ans, (int, float)) and not isinstance(ans, bool):
        s = normalize_answer(ans)
    else:
        s = str(ans).strip()
        while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
            s = s[1:-1].strip()
        s = _NUMBER_WITH_UNIT.sub(r"\1", s)
    return "\\boxed{" + _rewrite_e_notation(s) + "}"


def _completion_for_math_verify(text: str) -> str:
    """A completion as math-verify reads it: a GSM8K ``#### N`` answer line (a marker its extraction does
    not know) becomes ``\\boxed{N}`` unless the text has a box of its own; e-notation rewritten."""
    if "\\boxed" not in text and "\\fbox" not in text:
        hashed = extract_hash_answer(text)
        if hashed:
            return _answer_for_math_verify(hashed)
    return _rewrite_e_notation(text)


def _check_thread() -> None:
    if threading.current_thread() is not threading.main_thread():
        raise _CannotRun("not on the main thread (math-verify's time limit is SIGALRM)")


def _mv_parse(text: str, what: str) -> list:
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        got = parse(text, parsing_timeout=TIMEOUT_S, raise_on_error=True)
    except TimeoutException as e:
        raise _CannotRun(f"math-verify timed out parsing the {what}") from e
    except Exception as e:  # noqa: BLE001 - any failure inside math-verify means: it cannot decide
        raise _CannotRun(f"math-verify raised parsing the {what}: {type(e).__name__}") from e
    if not got:
        raise _CannotRun(f"math-verify extracted nothing from the {what}")
    return got


@lru_cache(maxsize=8192)
def _mv_parse_answer(text: str, what: str) -> tuple:
    return tuple(_mv_parse(text, what))


def _mv_verify(gold: tuple, pred: list | tuple) -> bool:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        return bool(verify(list(gold), list(pred), timeout_seconds=TIMEOUT_S, raise_on_error=True))
    except TimeoutException as e:
        raise _CannotRun("math-verify timed out comparing") from e
    except Exception as e:  # noqa: BLE001
        raise _CannotRun(f"math-verify raised comparing: {type(e).__name__}") from e


def _blank(x: object) -> bool:
    return x is None or not str(x).strip()


def _mv_gold(gold: str | float | int) -> tuple:
    return _mv_parse_answer(_answer_for_math_verify(gold), "reference")


def equiv_verdict(pred: str | float | int | None, gold: str | float | int | None, rel_tol: float = 1e-4) -> Verdict:
    """Whether an extracted answer ``pred`` matches the reference ``gold``, and which grader decided.
    ``rel_tol`` applies to the fallback only (math-verify rounds numbers to 6 decimals)."""
    if _blank(pred) or _blank(gold):
        return Verdict(False, NOTHING)
    try:
        _check_thread()
        g = _mv_gold(gold)
        p = _mv_parse_answer(_answer_for_math_verify(pred), "answer")
        return Verdict(_mv_verify(g, p), MATH_VERIFY)
    except _CannotRun as e:
        return Verdict(fallback_is_equiv(pred, gold, rel_tol=rel_tol), FALLBACK, str(e))


def grade_verdict(completion: str | None, gold: str | float | int | None, rel_tol: float = 1e-4) -> Verdict:
    """Grade a whole completion against the reference answer ``gold`` (math-verify's extraction and
    comparison; the fallback where it cannot run), and say which grader decided."""
    if _blank(completion) or _blank(gold):
        return Verdict(False, NOTHING)
    try:
        _check_thread()
        g = _mv_gold(gold)
        p = _mv_parse(_completion_for_math_verify(str(completion)), "completion")
        return Verdict(_mv_verify(g, p), MATH_VERIFY)
    except _CannotRun as e:
        return Verdict(fallback_grade(str(completion), gold, rel_tol=rel_tol), FALLBACK, str(e))


def is_equiv(pred: str | float | int | None, gold: str | float | int | None, rel_tol: float = 1e-4) -> bool:
    """Whether a predicted final answer matches the reference (math-verify; see the module doc)."""
    return equiv_verdict(pred, gold, rel_tol=rel_tol).correct


def grade(completion: str, gold: str | float | int | None, rel_tol: float = 1e-4) -> bool:
    """Whether ``completion``'s final answer matches the reference ``gold`` (math-verify's extraction and
    comparison; see the module doc)."""
    return grade_verdict(completion, gold, rel_tol=rel_tol).correct
