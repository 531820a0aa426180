"""Final-answer extraction and equivalence for math benchmarks.

Extraction, in order of preference: the last ``\\boxed{...}`` (or ``\\fbox{...}``), the text after the
last ``####`` (GSM8K), a sentence "the answer is X", and finally the last number in the text.

Equivalence: both sides are normalised (LaTeX wrappers, ``\\text{}``, units in text, ``$``, degree
signs, thousands separators, ``\\dfrac`` ...), compared as strings, then as numbers with a relative
tolerance, then symbolically with sympy after a small LaTeX-to-sympy translation. Tuples/intervals
and comma-separated lists are compared element by element (in order).

Simplification: this is a pragmatic grader in the style of the Qwen2.5-Math / PRIME evaluation
scripts, not a full LaTeX parser. Matrices, set-builder notation and units with conversions are out
of scope; when neither side parses, only the normalised strings are compared.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

__all__ = [
    "extract_boxed",
    "extract_hash_answer",
    "extract_last_number",
    "extract_answer",
    "normalize_answer",
    "parse_number",
    "is_equiv",
    "grade",
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


def is_equiv(pred: str | float | int | None, gold: str | float | int | None, rel_tol: float = 1e-4) -> bool:
    """Whether a predicted final answer matches the reference (see module doc for the rules)."""
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


def grade(completion: str, gold: str | float | int | None, rel_tol: float = 1e-4) -> bool:
    """Extract the final answer from ``completion`` and compare it with the reference answer ``gold``."""
    return is_equiv(extract_answer(completion), gold, rel_tol=rel_tol)
