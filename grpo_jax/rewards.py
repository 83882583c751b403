"""Host-side verifiers (pure Python, no JAX) and their weighted combination.

GRPO's reward is a sum of rule-based verifiers (DeepSeekMath / R1): r_i = sum_k w_k * v_k(o_i, gold_i).
Every verifier here maps (completion text, gold) -> float, never raises on model output, and is fast
by construction on adversarial text (megabytes of garbage, thousands of tags):

- Whole-completion work is limited to linear-time C string methods (`str.count`, `str.find`,
  `str.strip`); regexes and Python loops only ever see a bounded slice (an answer of at most
  `MAX_ANSWER_CHARS`, a number of at most `MAX_NUMBER_CHARS`, an expression of at most
  `MAX_EXPR_CHARS`), and no regex has nested overlapping quantifiers (no catastrophic backtracking).
- Numbers are compared as canonical digit strings, never converted to int / float, so "9" * 100000
  cannot hang (and Python's int-from-str digit limit never triggers).
- sympy (via math_verify) only sees answers of at most `MAX_SYMPY_CHARS` whose parsed value fits
  `MAX_SYMPY_BITS` (`_magnitude_bits`), because a power tower like 9^{9^{9^{9}}} makes sympy run one
  big-int power in C that no timer can interrupt.
- `combine` adds a per-call time limit as a safety net (see `_call_with_time_limit`): a verifier that
  raises, returns a non-finite value or runs past the limit scores 0 and is counted in the stats.

Answer extraction (`extract_answer`), precisely:
1. If the completion contains any `<answer` or `</answer` marker, it must hold exactly one `<answer>`
   and exactly one `</answer>`, in that order: the answer is the text between them, stripped. Anything
   else (two answers, nested or unterminated tags) is None; there is no fallback, because the model
   used the tag format and broke it.
2. Only for style "think" / "plain", when there are no answer-tag markers at all: the content of
   `\\boxed{...}` (balanced braces) if every `\\boxed` in the completion is well formed and they all
   hold the same text (at most `MAX_BOXED`); repeating one value is not hedging, two values are.
3. Else (same styles): the rest of the line after "####" (GSM8K style), when "####" occurs exactly once.
   Two or more "####" is None (for "final" too).
4. Else, only for style "final" (a pretrained chat model's habit: the answer is the last number it
   writes): the last number in the completion (`_last_number`: optional minus sign, thousands groups,
   decimals), found with ten `str.rfind` calls and a regex over a window of `MAX_NUMBER_CHARS`.
5. Else None. Answers longer than `MAX_ANSWER_CHARS` or blank are None (spraying / no answer).
"""
from __future__ import annotations

import math
import re
import signal
import threading
import time
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from grpo_jax import ConfigError, import_path

# answer styles: <reasoning>/<answer>, R1's <think>, \boxed{}, and the final number of the text
STYLES = ("reasoning", "think", "plain", "final")
# Verifiers by name (config rewards.weights); users add theirs as "package.module:function".
# code_tests / code_format: grpo_jax.tasks.code (the task "code" or any example with meta["tests"]).
BUILTIN_REWARDS = ("correctness", "format", "overlong", "code_tests", "code_format")
# A final answer longer than this is not an answer (it is spraying); bounds all per-answer work.
MAX_ANSWER_CHARS = 1000
# Longest string `normalize_number` accepts; bounds the regex and rejects "9" * 100000.
MAX_NUMBER_CHARS = 100
# Longest countdown expression and deepest parenthesis nesting the parser accepts.
MAX_EXPR_CHARS = 200
MAX_EXPR_DEPTH = 16
# More \boxed{} than this in one completion is spraying.
MAX_BOXED = 8


class VerifierTimeout(BaseException):
    """Raised by the SIGALRM handler of `_call_with_time_limit`.

    A BaseException (like KeyboardInterrupt) so that `except Exception` blocks inside a verifier
    (math_verify has many) cannot swallow it and turn a timeout into an uncounted 0.
    """


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")


# --------------------------------------------------------------------------------------------------
# Answer extraction and numeric normalisation
# --------------------------------------------------------------------------------------------------
def _tag_pair(text: str, name: str) -> tuple[int, int, int, int] | None:
    """(open_start, content_start, content_end, close_end) of the single `<name>…</name>` pair.

    None unless `<name` and `</name` each occur exactly once, as the exact tags, in order. Prefix
    counts catch near-tags like `<answer >` or `</answer` without `>` as malformed.
    """
    open_tag, close_tag = f"<{name}>", f"</{name}>"
    if text.count(f"<{name}") != 1 or text.count(f"</{name}") != 1:
        return None
    i = text.find(open_tag)
    j = text.find(close_tag)
    if i < 0 or j < 0 or j < i + len(open_tag):
        return None
    return i, i + len(open_tag), j, j + len(close_tag)


def _boxed_contents(text: str) -> list[str] | None:
    """Contents of every `\\boxed{...}` in `text`, or None if any is malformed / there are too many."""
    if text.count("\\boxed") > MAX_BOXED:
        return None
    out, start = [], 0
    while (i := text.find("\\boxed", start)) >= 0:
        k = i + len("\\boxed")
        if not text.startswith("{", k):
            return None
        depth, end = 0, None
        # Bounded scan: an answer longer than MAX_ANSWER_CHARS is rejected anyway.
        for pos in range(k, min(len(text), k + MAX_ANSWER_CHARS + 2)):
            ch = text[pos]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = pos
                    break
        if end is None:
            return None  # unterminated or over-long
        out.append(text[k + 1 : end])
        start = end + 1
    return out


def extract_answer(completion: str, *, style: str = "reasoning") -> str | None:
    """The one final answer of a completion (stripped), or None. Rules in the module docstring."""
    _check_style(style)
    if not isinstance(completion, str):
        return None
    if "<answer" in completion or "</answer" in completion:
        pair = _tag_pair(completion, "answer")
        answer = None if pair is None else completion[pair[1] : pair[2]]
    elif style == "reasoning":
        answer = None
    elif "\\boxed" in completion:
        boxed = _boxed_contents(completion)
        answer = boxed[0] if boxed and len({b.strip() for b in boxed}) == 1 else None
    elif "####" in completion:
        if completion.count("####") != 1:
            return None
        rest = completion[completion.find("####") + 4 :]
        newline = rest.find("\n")
        answer = rest if newline < 0 else rest[:newline]
    elif style == "final":
        found = _last_number(completion)
        answer = None if found is None else found[0]
    else:
        answer = None
    if answer is None:
        return None
    answer = answer.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return None
    return answer


# The longest number ending at the window's end: digits with optional thousands groups and decimals.
_TRAILING_NUMBER_RE = re.compile(r"[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?$")
# What may follow the final number of a "final"-style completion whose format is strict.
_CLOSING_CHARS = " \t\n.!*)$"


def _last_number(text: str) -> tuple[str, int] | None:
    """(the last number written in `text`, the index just after it), or None.

    A minus sign counts when it is not preceded by a digit or letter ("-5", "is -5", but "12-5" ends
    with 5). Linear: ten `str.rfind` calls find the last digit; the regex sees a window of
    MAX_NUMBER_CHARS + 1 characters. A number longer than that window (e.g. "9" * 10**6) is None."""
    end = max(text.rfind(d) for d in "0123456789") + 1
    if end == 0:
        return None
    start = max(0, end - MAX_NUMBER_CHARS - 1)
    m = _TRAILING_NUMBER_RE.search(text, start, end)
    if m is None:
        return None
    i = m.start()
    if end - i > MAX_NUMBER_CHARS:
        return None  # a number longer than any answer (it may run past the window): spraying
    if i > 0 and text[i - 1] in "-\u2212" and (i == 1 or not text[i - 2].isalnum()):
        i -= 1
    return text[i:end], end


# sign, integer part (plain digits or well-formed thousands groups), fraction digits. Optional "$"
# around / after the sign and one trailing period. Input is stripped first and at most
# MAX_NUMBER_CHARS long; no two adjacent quantifiers can match the same text, so matching is linear.
_NUMBER_RE = re.compile(r"\$?([+-]?)\$?\s*(\d{1,3}(?:,\d{3})+|\d+)?(?:\.(\d+))?\s*\$?\.?")


def normalize_number(text: str) -> str | None:
    """Canonical decimal string of a number written in `text`, or None if `text` is not one number.

    Accepts: surrounding whitespace, `$` (also LaTeX `\\$` and `$...$`), a leading `+` or `-`, the
    unicode minus U+2212, thousands separators only in well-formed groups ("1,234,567"; also LaTeX
    "1{,}234"), leading zeros ("007" == "7"), trailing fractional zeros ("1.50" == "1.5",
    "1.0" == "1"), ".5", and one trailing period ("5." == "5"). "-0" == "0".
    Rejects everything else: "5 or 6", "5, 6", "1e3", "3/4", "50%", words, and strings longer than
    MAX_NUMBER_CHARS. Purely string based: no int/float conversion, so huge inputs cannot hang.
    """
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        return None
    s = text.replace("\u2212", "-").replace("\\$", "$").replace("{,}", ",").strip()
    m = _NUMBER_RE.fullmatch(s)
    if m is None or (m.group(2) is None and m.group(3) is None):
        return None
    integer = (m.group(2) or "").replace(",", "").lstrip("0") or "0"
    fraction = (m.group(3) or "").rstrip("0")
    sign = "-" if m.group(1) == "-" and (integer != "0" or fraction) else ""
    return sign + integer + ("." + fraction if fraction else "")


def _normalize_text(text: str) -> str:
    """Loose string form for non-numeric golds: no whitespace, no `$`, no trailing period."""
    return "".join(text.replace("$", "").split()).rstrip(".")


# --------------------------------------------------------------------------------------------------
# Verifiers
# --------------------------------------------------------------------------------------------------
def correctness(completion: str, gold: str, *, style: str = "reasoning") -> float:
    """1.0 iff the completion has exactly one final answer (`extract_answer`) equal to `gold`.

    Numeric golds compare by `normalize_number` (so "$1,234.00" == "1234", "\u22125" == "-5", and a
    hedge like "5 or 6" or a spray "1 2 3 ... 100" is not a number and scores 0). Non-numeric golds
    compare by `_normalize_text` (whitespace and `$` ignored). Never raises on model output.
    """
    answer = extract_answer(completion, style=style)
    if answer is None:
        return 0.0
    gold_number = normalize_number(gold)
    if gold_number is not None:
        return 1.0 if normalize_number(answer) == gold_number else 0.0
    return 1.0 if _normalize_text(answer) == _normalize_text(str(gold)) else 0.0


def format_reward(completion: str, *, style: str = "reasoning") -> float:
    """Format score in [0, 1]; 1.0 exactly for the strict format of `style`.

    Scoring table ("well-formed pair" = `_tag_pair`: each tag exactly once, in order, and the
    content between them not blank, so empty tags cannot farm format reward):

    style="reasoning" (strict: `^\\s*<reasoning>X</reasoning>\\s*<answer>Y</answer>\\s*$`):
        +0.25  well-formed `<reasoning>…</reasoning>` pair
        +0.25  well-formed `<answer>…</answer>` pair
        +0.25  both, and only whitespace between `</reasoning>` and `<answer>`
        +0.25  all of the above, and only whitespace before `<reasoning>` and after `</answer>`
    style="think" (R1; the opening `<think>` may be absent because chat templates often prefill it):
        +0.5   exactly one `</think>`, at most one `<think>` which then opens the completion (only
               whitespace before it), and non-blank thinking text before `</think>`
        +0.5   an answer extractable (`extract_answer(style="think")`) from the text after `</think>`
               (the whole completion when there is no `</think>`)
    style="plain": 1.0 if `extract_answer(style="plain")` finds an answer, else 0.0.
    style="final": 1.0 if the answer is marked (`<answer>`, `\\boxed{}` or "####") or the completion
               ENDS with its final number (only whitespace and `.!*)$` after it: "... is 47.",
               "**47**"), else 0.0. Correctness reads the last number anywhere; the format asks that the
               model end on it, so a completion that trails off after its answer earns no format reward.
    """
    _check_style(style)
    if not isinstance(completion, str):
        return 0.0
    if style == "final":
        if extract_answer(completion, style="final") is None:
            return 0.0
        if "<answer" in completion or "\\boxed" in completion or "####" in completion:
            return 1.0
        found = _last_number(completion)
        tail = completion[found[1] :]
        return 1.0 if len(tail) <= MAX_ANSWER_CHARS and not tail.strip(_CLOSING_CHARS) else 0.0
    if style == "plain":
        return 1.0 if extract_answer(completion, style="plain") is not None else 0.0
    if style == "think":
        score = 0.0
        closes = completion.count("</think")
        opens = completion.count("<think")
        j = completion.find("</think>")
        if closes == 1 and j >= 0 and opens <= 1:
            i = completion.find("<think>")
            if opens == 0:
                score += 0.5 if completion[:j].strip() else 0.0
            elif 0 <= i < j and not completion[:i].strip() and completion[i + 7 : j].strip():
                score += 0.5
        tail = completion[j + len("</think>") :] if closes == 1 and j >= 0 else completion
        score += 0.5 if extract_answer(tail, style="think") is not None else 0.0
        return score
    text = completion
    score = 0.0
    r = _tag_pair(text, "reasoning")
    a = _tag_pair(text, "answer")
    r_ok = r is not None and bool(text[r[1] : r[2]].strip())
    a_ok = a is not None and bool(text[a[1] : a[2]].strip())
    score += 0.25 * r_ok + 0.25 * a_ok
    if r_ok and a_ok and r[3] <= a[0] and not text[r[3] : a[0]].strip():
        score += 0.25
        if not text[: r[0]].strip() and not text[a[3] :].strip():
            score += 0.25
    return score


def _parse_countdown(expr: str) -> tuple[Fraction, list[int]] | None:
    """Value and literals of an arithmetic expression, or None if it is not one.

    Grammar (recursive descent, exact rational arithmetic):
        expr := term (("+" | "-") term)* ;  term := factor (("*" | "/") factor)* ;
        factor := INT | "(" expr ")" ;      INT := "0" | [1-9][0-9]{0,5}
    No unary minus, no decimals, no names or calls (so `__import__` is a syntax error), at most
    MAX_EXPR_CHARS characters and MAX_EXPR_DEPTH nested parentheses; division by zero is None.
    """
    if len(expr) > MAX_EXPR_CHARS:
        return None
    tokens: list[str | int] = []
    pos = 0
    while pos < len(expr):
        ch = expr[pos]
        if ch.isspace():
            pos += 1
        elif ch in "+-*/()":
            tokens.append(ch)
            pos += 1
        elif "0" <= ch <= "9":  # ASCII only: str.isdigit accepts superscripts and other scripts
            end = pos
            while end < len(expr) and "0" <= expr[end] <= "9":
                end += 1
            literal = expr[pos:end]
            if len(literal) > 6 or (literal[0] == "0" and len(literal) > 1):
                return None
            tokens.append(int(literal))
            pos = end
        else:
            return None
    literals: list[int] = []
    index = 0

    def parse_expr(depth: int) -> Fraction | None:
        value = parse_term(depth)
        while value is not None and index < len(tokens) and tokens[index] in ("+", "-"):
            op = tokens[index]
            advance()
            rhs = parse_term(depth)
            if rhs is None:
                return None
            value = value + rhs if op == "+" else value - rhs
        return value

    def parse_term(depth: int) -> Fraction | None:
        value = parse_factor(depth)
        while value is not None and index < len(tokens) and tokens[index] in ("*", "/"):
            op = tokens[index]
            advance()
            rhs = parse_factor(depth)
            if rhs is None or (op == "/" and rhs == 0):
                return None
            value = value * rhs if op == "*" else value / rhs
        return value

    def parse_factor(depth: int) -> Fraction | None:
        if index >= len(tokens):
            return None
        token = tokens[index]
        if isinstance(token, int):
            advance()
            literals.append(token)
            return Fraction(token)
        if token == "(" and depth < MAX_EXPR_DEPTH:
            advance()
            value = parse_expr(depth + 1)
            if value is None or index >= len(tokens) or tokens[index] != ")":
                return None
            advance()
            return value
        return None

    def advance() -> None:
        nonlocal index
        index += 1

    value = parse_expr(0)
    if value is None or index != len(tokens):
        return None  # trailing tokens, e.g. "1+2)" or "1+2 3"
    return value, literals


def countdown_reward(
    completion: str, numbers: Sequence[int], target: int, *, style: str = "reasoning"
) -> float:
    """1.0 iff the answer is an arithmetic expression over `numbers` that equals `target`.

    Convention (TinyZero / "Countdown-Tasks-3to4", the one GRPO replications use): every given number
    is used exactly once (as a multiset), operators + - * / and parentheses, exact rational
    arithmetic (intermediate fractions are allowed; the value must equal the target exactly). The
    answer is the expression only (no "= 24"); see `_parse_countdown` for the grammar. Else 0.0.
    """
    answer = extract_answer(completion, style=style)
    if answer is None:
        return 0.0
    parsed = _parse_countdown(answer)
    if parsed is None:
        return 0.0
    value, literals = parsed
    if sorted(literals) != sorted(int(n) for n in numbers):
        return 0.0
    return 1.0 if value == Fraction(int(target)) else 0.0


_LATEX_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\displaystyle")
# math_verify sees only answers this short (MATH golds are <= 81 characters); longer ones are
# compared as strings only. Bounds sympy's parse time.
MAX_SYMPY_CHARS = 256
# Parsed expressions whose value could need more bits than this (e.g. 9^{9^{9^{9}}}) never reach
# math_verify.verify: sympy would evaluate them inside one C-level big-int power that neither a
# signal nor anything else can interrupt. Exponents / factorial arguments above 2**14 likewise.
MAX_SYMPY_BITS = 1 << 20


def _clean_latex(text: str) -> str:
    """Drop spacing / sizing commands and \\dfrac-style variants: "14,\\!400" -> "14,400"."""
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "")
    return text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _magnitude_bits(expr: Any) -> float:
    """Upper bound on log2 |value| of a sympy expression, without evaluating it.

    Symbols and constants count 1 bit; Add / Mul / containers sum their arguments; a power with an
    exponent of e bits is (base bits) * 2**e; a factorial of an n-bit argument n * 2**n. Exponents
    or factorial arguments wider than 14 bits give inf, and so do exponents wider than 7 bits
    (> 255) on a non-numeric base. The walk is linear in the tree size, which
    parsing a <= MAX_SYMPY_CHARS string bounds.
    """
    if expr.is_Integer:
        return float(max(abs(int(expr)).bit_length(), 1))
    if expr.is_Rational:
        return float(max(abs(expr.p).bit_length(), 1) + max(expr.q.bit_length(), 1))
    if expr.is_Float:
        value = abs(float(expr))
        return max(1.0, math.log2(value + 1.0)) if math.isfinite(value) else math.inf
    if expr.is_Pow:
        exponent_bits = _magnitude_bits(expr.exp)
        if exponent_bits > 14 or (exponent_bits > 7 and not expr.base.is_number):
            return math.inf  # a symbolic base, (x+1)^{9999}: sympy expands it for minutes
        return _magnitude_bits(expr.base) * 2.0**exponent_bits
    if type(expr).__name__ == "factorial":
        argument_bits = _magnitude_bits(expr.args[0])
        return math.inf if argument_bits > 14 else argument_bits * 2.0**argument_bits
    args = getattr(expr, "args", ())
    return sum(_magnitude_bits(arg) for arg in args if hasattr(arg, "is_Integer")) if args else 1.0


def math_reward(
    completion: str, gold: str, *, style: str = "think", time_limit: float = 5.0
) -> float:
    """MATH verification: 1.0 iff the final answer is mathematically equal to `gold`.

    The answer is `extract_answer(completion, style=style)` (for "think"/"plain" this includes the
    last-resort `\\boxed{}`). First cheap string checks on LaTeX-cleaned text (`_clean_latex`):
    equal numbers (`normalize_number`, so "14,\\!400" == "14400") or equal text
    (`_normalize_text`). Otherwise both sides are wrapped in `\\boxed{}` and checked with
    `math_verify.parse` + `math_verify.verify` (sympy equivalence: "\\dfrac{9}{7}" == "9/7",
    "0.5" == "\\frac{1}{2}", tuples, intervals), provided both are at most MAX_SYMPY_CHARS long
    and their parsed values fit MAX_SYMPY_BITS (`_magnitude_bits`: power towers are rejected).

    Time limit: math_verify's own timeouts use `signal.alarm`, which raises ValueError outside the
    main thread and only has whole-second resolution, so both are disabled (`parsing_timeout=None`,
    `timeout_seconds=None`) and the whole sympy part runs under `_call_with_time_limit(time_limit)`
    instead (preemptive in the main thread, measured elsewhere). A timeout scores 0 here; under
    `combine`, whose per-call limit is shorter by default, it is counted there.
    """
    answer = extract_answer(completion, style=style)
    if answer is None:
        return 0.0
    gold = str(gold).strip()
    clean_answer, clean_gold = _clean_latex(answer), _clean_latex(gold)
    number = normalize_number(clean_gold)
    if number is not None and normalize_number(clean_answer) == number:
        return 1.0
    if _normalize_text(clean_answer) == _normalize_text(clean_gold):
        return 1.0
    if len(answer) > MAX_SYMPY_CHARS or len(gold) > MAX_SYMPY_CHARS:
        return 0.0

    def sympy_equal() -> bool:
        import sympy
        from math_verify import parse, verify  # lazy: sympy + antlr take ~0.4 s to import

        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
        answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
        for item in (*gold_parsed, *answer_parsed):
            if isinstance(item, sympy.Basic) and not _magnitude_bits(item) <= MAX_SYMPY_BITS:
                return False
        return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))

    try:
        equal, timed_out = _call_with_time_limit(sympy_equal, time_limit)
    except Exception:  # math_verify on model output may raise anything; that is a "no"
        return 0.0
    return 1.0 if equal and not timed_out else 0.0


def overlong_penalty(length: int, *, max_length: int, cache_length: int) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, "DAPO", Eq. 13), with L = length:

        R(L) = 0                                     if L <= max_length - cache_length
             = ((max_length - cache_length) - L) / cache_length
                                                      if max_length - cache_length < L <= max_length
             = -1                                    if L > max_length

    i.e. 0 up to the start of the cache window, linear down to -1 at `max_length`, -1 beyond. Lengths
    are in tokens. `cache_length=0` gives a hard step at `max_length`.
    """
    if not 0 <= cache_length <= max_length:
        raise ValueError(f"need 0 <= cache_length <= max_length, got {cache_length=} {max_length=}")
    start = max_length - cache_length
    if length <= start:
        return 0.0
    if length > max_length:
        return -1.0
    return (start - length) / cache_length


# --------------------------------------------------------------------------------------------------
# Time limit and combination
# --------------------------------------------------------------------------------------------------
def _call_with_time_limit(fn: Callable[[], Any], seconds: float) -> tuple[Any, bool]:
    """(fn(), timed_out). Never starts a thread.

    Main thread (POSIX): a one-shot SIGALRM timer (`setitimer`, sub-second) interrupts `fn` with
    `VerifierTimeout`; an outer timer that was already armed (pytest-timeout, an enclosing call) is
    honoured: ours fires at the earlier deadline, hands the signal to the outer handler if that
    deadline is the outer one, and the outer timer is re-armed with its remaining time afterwards.
    Elsewhere (signals can only be handled in the main thread): `fn` runs to completion and a call
    that took longer than `seconds` is reported as timed out (its value is discarded). Verifiers are
    bounded by construction, so this is a safety net, not the mechanism that keeps them fast.
    A signal cannot interrupt one long C call (a regex, a huge int): hence bounded inputs.
    """
    start = time.monotonic()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        value = fn()
        return (None, True) if time.monotonic() - start > seconds else (value, False)

    deadline = start + seconds
    marker = VerifierTimeout()
    outer_fired = False

    def on_alarm(signum, frame):
        nonlocal outer_fired
        if time.monotonic() >= deadline - 1e-3:
            raise marker
        outer_fired = True  # the outer deadline came first: its handler decides
        if callable(old_handler):
            old_handler(signum, frame)

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if 0 < old_delay < seconds:
        signal.setitimer(signal.ITIMER_REAL, old_delay)
    try:
        try:
            value, timed_out = fn(), False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except VerifierTimeout as error:
        if error is not marker:
            raise
        value, timed_out = None, True
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0 and not outer_fired:
            remaining = old_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-4), old_interval)
    return value, timed_out


def combine(
    completions: Sequence[str],
    golds: Sequence[Any],
    *,
    weights: Mapping[str, float],
    verifiers: Mapping[str, Callable[[str, Any], float]] | None = None,
    extra: Mapping[str, Sequence[float]] | None = None,
    style: str = "reasoning",
    time_limit: float = 1.0,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """rewards f32[N] = sum_k weights[k] * component_k, for every name k in `weights`.

    - `verifiers`: name -> fn(completion, gold) -> float. Default (built per call, no registry):
      {"correctness": correctness(c, g, style=style), "format": format_reward(c, style=style)}.
    - `extra`: name -> f32[N] precomputed per-row components that need more than text (e.g.
      "overlong": `overlong_penalty` of the token lengths from the sampler); weighted like the rest.
    - Each name in `weights` must be in exactly one of the two; an unknown name is a ValueError.
    - A verifier call that raises, returns a non-finite or non-numeric value, or runs past
      `time_limit` seconds (`_call_with_time_limit`) scores 0 for that row and component.

    Returns (rewards f32[N], components {name: f32[N]} (unweighted), stats) with stats
    `verifier_errors`, `verifier_timeouts` (counts over all calls), `verifier_seconds` (total wall
    time) and `verifier_max_seconds` (slowest single call).
    """
    n = len(completions)
    if len(golds) != n:
        raise ValueError(f"{n} completions but {len(golds)} golds")
    if verifiers is None:
        _check_style(style)
        verifiers = {
            "correctness": lambda c, g: correctness(c, g, style=style),
            "format": lambda c, g: format_reward(c, style=style),
        }
    extra = extra or {}
    for name in weights:
        if (name in verifiers) == (name in extra):
            raise ValueError(
                f"weights[{name!r}] must name exactly one verifier {sorted(verifiers)} "
                f"or extra component {sorted(extra)}"
            )
    components: dict[str, np.ndarray] = {}
    errors = timeouts = 0
    total_seconds = max_seconds = 0.0
    for name in weights:
        if name in extra:
            column = np.asarray(extra[name], dtype=np.float32)
            if column.shape != (n,):
                raise ValueError(f"extra[{name!r}] has shape {column.shape}, expected ({n},)")
            components[name] = column
            continue
        fn = verifiers[name]
        column = np.zeros(n, np.float32)
        for i, (completion, gold) in enumerate(zip(completions, golds)):
            start = time.monotonic()
            try:
                value, timed_out = _call_with_time_limit(lambda: fn(completion, gold), time_limit)
                if timed_out:
                    timeouts += 1
                else:
                    value = float(value)
                    if math.isfinite(value):
                        column[i] = value
                    else:
                        errors += 1
            except Exception:  # a broken verifier must not stop training; it is counted instead
                errors += 1
            seconds = time.monotonic() - start
            total_seconds += seconds
            max_seconds = max(max_seconds, seconds)
        components[name] = column
    rewards = np.zeros(n, np.float32)
    for name, weight in weights.items():
        rewards += np.float32(weight) * components[name]
    stats = {
        "verifier_errors": errors,
        "verifier_timeouts": timeouts,
        "verifier_seconds": total_seconds,
        "verifier_max_seconds": max_seconds,
    }
    return rewards, components, stats


def from_config(config, task) -> dict[str, Callable[[str, Any], float]]:
    """name -> verifier `(completion, example) -> float` for every positively weighted name of
    `rewards.weights` but "overlong" (a function of token lengths: `overlong_penalty`, computed where
    the lengths are). Built-ins: "correctness" is the task's own check (`task.correct`), "format"
    `format_reward` in the task's style, "code_tests" / "code_format" grpo_jax.tasks.code's (the sandbox
    run limited to half of rewards.timeout_seconds; rewards.code_all_or_nothing); any other name is
    imported as "package.module:function"."""
    verifiers = {}
    for name, weight in config.rewards.weights.items():
        if weight == 0 or name == "overlong":
            continue
        if name == "correctness":
            verifiers[name] = task.correct
        elif name == "format" and getattr(task, "format", None) is not None:  # the task's own (code: one block)
            verifiers[name] = lambda completion, example, score=task.format: score(completion)
        elif name == "format":
            verifiers[name] = lambda completion, example, style=task.style: format_reward(completion, style=style)
        elif name in ("code_tests", "code_format"):
            from grpo_jax.tasks import code, code_timeout  # tasks imports this module
            if name == "code_tests":
                code.require_sandbox("rewards.weights.code_tests")
            if name == "code_format":
                verifiers[name] = code.code_format
            else:
                verifiers[name] = lambda completion, example, a=config.rewards.code_all_or_nothing, \
                    t=code_timeout(config): code.code_tests(completion, example, all_or_nothing=a, timeout_s=t)
        else:
            fn = import_path(name, f"rewards.weights.{name}")
            if not callable(fn):
                raise ConfigError(f"config key `rewards.weights.{name}`: {name!r} is not a function")
            verifiers[name] = fn
    return verifiers


def metric_name(name: str) -> str:
    """The metrics key of a reward component: "reward_" + its name ("pkg.mod:fn" -> "reward_fn").
    `check_metric_names` refuses weights whose keys would collide."""
    return "reward_" + name.rsplit(":", 1)[-1]


# Keys the trainer writes itself into the same metrics row as the reward_<name> components
# (rollout.batch_metrics, the step's timings in train.py): a component named like one is overwritten.
RESERVED_METRICS = ("reward_mean", "reward_std", "reward_seconds", "reward_zero_std_fraction")


def check_metric_names(names: Sequence[str]) -> None:
    """ConfigError unless the reward names `names` (the positively weighted keys of rewards.weights)
    give distinct metric keys: "a:short" and "b:short" would both write `reward_short` and one value
    would be lost, "mymod:correctness" would overwrite the built-in's `reward_correctness`, and
    "mymod:mean" the batch's `reward_mean`. Shape only: nothing is imported."""
    seen = {}
    for name in names:
        key = metric_name(name)
        if key in RESERVED_METRICS:
            raise ConfigError(f"config key `rewards.weights.{name}`: its metric `{key}` is one the trainer "
                              f"writes itself ({', '.join(RESERVED_METRICS)}); give the function another name")
        if key in seen:
            raise ConfigError(f"config keys `rewards.weights.{seen[key]}` and `rewards.weights.{name}` would both "
                              f"be logged as `{key}` (a reward's metric is named after its function), so one "
                              f"value would be lost: give one of the functions another name")
        seen[key] = name
