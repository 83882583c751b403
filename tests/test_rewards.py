"""Verifiers: exact scores on hand-checked and adversarial completions, hypothesis properties,
time limits and the weighted combination."""
import os
import random
import re
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import rewards
from grpo_jax.rewards import (
    combine,
    correctness,
    countdown_reward,
    extract_answer,
    format_reward,
    math_reward,
    normalize_number,
    overlong_penalty,
)


def tagged(answer: str) -> str:
    return f"<reasoning>x</reasoning><answer>{answer}</answer>"


# --------------------------------------------------------------------------------------------------
# correctness: normalisation and adversarial answers, exact scores
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        ("5", "5", 1.0),
        ("  5\n", "5", 1.0),  # surrounding whitespace
        ("$1,234.00", "1234", 1.0),  # dollar, thousands separator, trailing zeros
        ("1,234,567", "1234567", 1.0),
        ("\u22125", "-5", 1.0),  # unicode minus U+2212
        ("-5", "5", 0.0),
        ("5.", "5", 1.0),  # trailing period
        ("1.0", "1", 1.0),
        ("1.50", "1.5", 1.0),
        (".5", "0.5", 1.0),
        ("+5", "5", 1.0),
        ("007", "7", 1.0),  # leading zeros are the same number
        ("-0", "0", 1.0),
        ("$5$", "5", 1.0),  # LaTeX math delimiters
        ("\\$18", "18", 1.0),  # LaTeX-escaped dollar
        ("1{,}234", "1234", 1.0),  # LaTeX thousands separator
        ("18", "1,8", 0.0),  # malformed gold grouping is not a number -> compared as text
        ("5 or 6", "5", 0.0),  # hedging
        ("5, 6", "5", 0.0),  # hedging with a comma
        ("5,6", "56", 0.0),  # not a well-formed thousands group
        ("12,34", "1234", 0.0),
        (" ".join(str(i) for i in range(1, 101)), "5", 0.0),  # answer spraying
        ("5 6", "5", 0.0),
        ("", "5", 0.0),  # empty answer
        ("   ", "5", 0.0),  # whitespace-only answer
        ("x = 5", "5", 0.0),  # strict: the answer must be the number itself
        ("50%", "50", 0.0),
        ("1e1", "10", 0.0),
        ("9" * 100_000, "9", 0.0),  # huge number: bounded, never converted to int
        ("9" * 100_000, "9" * 100_000, 0.0),  # over MAX_ANSWER_CHARS: not an answer (spraying)
        ("9" * 100, "9" * 100, 1.0),  # long but within MAX_NUMBER_CHARS
        ("9" * 101, "9" * 101, 1.0),  # over MAX_NUMBER_CHARS -> exact text comparison still holds
        ("1" + "0" * 95 + ".0", "1" + "0" * 95, 1.0),  # 97-digit numbers, compared as strings
        ("Paris", "paris", 0.0),  # non-numeric gold: whitespace-insensitive, case-sensitive text
        ("New  York", "New York", 1.0),
    ],
)
def test_correctness_normalisation(answer, gold, expected):
    assert correctness(tagged(answer), gold) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<reasoning>x</reasoning><answer>5</answer>", 1.0),
        ("<answer>5</answer>", 1.0),  # correctness ignores the reasoning block (format_reward scores it)
        ("<reasoning>x</reasoning><answer>5</answer><answer>5</answer>", 0.0),  # two answer tags
        ("<answer>5</answer><answer>6</answer>", 0.0),
        ("<reasoning>x</reasoning><answer>5", 0.0),  # unterminated
        ("<reasoning>x</reasoning>5</answer>", 0.0),  # no opening tag
        ("</answer>5<answer>", 0.0),  # reversed
        ("<answer><answer>5</answer></answer>", 0.0),  # nested
        ("<answer >5</answer>", 0.0),  # near-miss tag
        ("<Answer>5</Answer>", 0.0),  # tags are case-sensitive
        ("The answer is 5.", 0.0),  # reasoning style: no tag, no fallback
        ("\\boxed{5}", 0.0),
        ("#### 5", 0.0),
    ],
)
def test_correctness_tag_structure(completion, expected):
    assert correctness(completion, "5") == expected


@pytest.mark.parametrize(
    "completion, style, expected",
    [
        ("thinking... \\boxed{5}", "plain", "5"),
        ("\\boxed{5} so again \\boxed{5}", "plain", "5"),  # repeating one value is not hedging
        ("\\boxed{5} or \\boxed{6}", "plain", None),  # two values
        ("\\boxed{\\frac{1}{2}}", "think", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{5", "plain", None),  # unterminated
        ("\\boxed 5", "plain", None),  # braceless
        ("".join("\\boxed{5}" for _ in range(9)), "plain", None),  # > MAX_BOXED
        ("work\n#### 1,234\nbye", "plain", "1,234"),
        ("#### 5\n#### 6", "plain", None),
        ("<think>a</think> <answer> 7 </answer> \\boxed{8}", "think", "7"),  # tags win over boxed
        ("<think>a</think> <answer>7 \\boxed{8}", "think", None),  # broken tags: no fallback
        ("The answer is 5", "plain", None),
        ("\\boxed{5}", "reasoning", None),
    ],
)
def test_extract_answer_fallbacks(completion, style, expected):
    assert extract_answer(completion, style=style) == expected


def test_correctness_plain_and_think_styles():
    assert correctness("So \\boxed{1,234}.", "1234", style="plain") == 1.0
    assert correctness("<think>2+2</think>\n<answer>4</answer>", "4", style="think") == 1.0
    assert correctness("<think>2+2</think> \\boxed{4} \\boxed{5}", "4", style="think") == 0.0
    with pytest.raises(ValueError, match="style"):
        correctness("<answer>4</answer>", "4", style="boxed")


def test_normalize_number_table():
    assert normalize_number("-$1,000.50") == "-1000.5"
    assert normalize_number("$-0.0") == "0"
    assert normalize_number("0012.3400") == "12.34"
    assert normalize_number("1,23") is None
    assert normalize_number("--5") is None
    assert normalize_number(".") is None
    assert normalize_number("") is None
    assert normalize_number("1" * 101) is None  # MAX_NUMBER_CHARS


# --------------------------------------------------------------------------------------------------
# Megabytes of garbage: exact scores (timings are in the report, not asserted)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def garbage():
    """2 MB adversarial completions."""
    rng = random.Random(0)
    return {
        "random_bytes": rng.randbytes(2_000_000).decode("latin-1"),
        "random_unicode": "".join(map(chr, rng.choices(range(0x20, 0x3000), k=2_000_000))),
        "repeated_answer_tags": "<answer>5</answer>" * 120_000,
        "repeated_open_tags": "<reasoning><answer>" * 110_000,
        "repeated_boxed": "\\boxed{5}" * 230_000,
        "unterminated_boxed": "\\boxed{" * 300_000,
        "digits": "9" * 2_000_000,
        "parens": "(" * 2_000_000,
        "hashes": "#### 5\n" * 300_000,
    }


def test_two_megabyte_completions_score_zero(garbage):
    for name, completion in garbage.items():
        assert len(completion) >= 2_000_000, name
        for style in rewards.STYLES:
            if style == "final" and name.startswith("random"):
                # random text has a last number, and style "final" reads it: "5" scores, others do not
                last = re.findall(r"[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?", completion)[-1]
                expected = 1.0 if normalize_number(last) == "5" else 0.0
                assert correctness(completion, "5", style=style) == expected, name
                assert correctness(completion, last.replace(",", ""), style=style) == 1.0, name
                continue
            assert correctness(completion, "5", style=style) == 0.0, (name, style)
            assert countdown_reward(completion, [1, 4], 5, style=style) == 0.0, (name, style)
            assert format_reward(completion, style=style) == 0.0, (name, style)
        assert math_reward(completion, "5") == 0.0, name


def test_answer_after_two_megabytes_of_text_is_still_found(garbage):
    # The tag scan covers the whole completion (linear-time str.count / str.find), so a valid answer
    # after 2 MB of text counts; the strict format does not (text before <reasoning>).
    completion = garbage["random_unicode"] + "<reasoning>ok</reasoning><answer>5</answer>"
    assert correctness(completion, "5") == 1.0
    assert format_reward(completion) == 0.75
    assert correctness(garbage["random_unicode"] + "<answer>5</answer><answer>5</answer>", "5") == 0.0


# --------------------------------------------------------------------------------------------------
# format_reward: the documented scoring table
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<reasoning>\nr\n</reasoning>\n<answer>\n5\n</answer>\n", 1.0),
        ("<reasoning>r</reasoning><answer>5</answer>", 1.0),
        ("  <reasoning>r</reasoning> \n <answer>5</answer>  ", 1.0),
        ("hi <reasoning>r</reasoning><answer>5</answer>", 0.75),  # text before
        ("<reasoning>r</reasoning><answer>5</answer> bye", 0.75),  # text after
        ("<reasoning>r</reasoning> so <answer>5</answer>", 0.5),  # text between
        ("<answer>5</answer><reasoning>r</reasoning>", 0.5),  # wrong order
        ("<answer>5</answer>", 0.25),
        ("<reasoning>r</reasoning>", 0.25),
        ("<reasoning>r</reasoning><answer>5", 0.25),  # unterminated answer
        ("<reasoning></reasoning><answer>5</answer>", 0.25),  # empty reasoning does not count
        ("<reasoning>r</reasoning><answer> </answer>", 0.25),  # blank answer does not count
        ("<reasoning>r</reasoning><answer>5</answer><answer>6</answer>", 0.25),
        ("<reasoning><reasoning>r</reasoning></reasoning><answer>5</answer>", 0.25),  # nested
        ("", 0.0),
        ("the answer is 5", 0.0),
    ],
)
def test_format_reward_reasoning_table(completion, expected):
    assert format_reward(completion) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>t</think>\n<answer>5</answer>", 1.0),
        ("t</think> <answer>5</answer>", 1.0),  # opening tag prefilled by the chat template
        ("<think>t</think> so \\boxed{5}", 1.0),
        ("<think>t</think>", 0.5),
        ("<think></think><answer>5</answer>", 0.5),  # empty thinking
        ("x <think>t</think><answer>5</answer>", 0.5),  # <think> not at the start
        ("<think>t</think></think><answer>5</answer>", 0.5),  # two closing tags
        ("<answer>5</answer>", 0.5),
        ("nothing here", 0.0),
    ],
)
def test_format_reward_think_table(completion, expected):
    assert format_reward(completion, style="think") == expected


def test_format_reward_plain():
    assert format_reward("so \\boxed{5}", style="plain") == 1.0
    assert format_reward("so 5", style="plain") == 0.0


# "final": the last number a pretrained chat model writes is its answer (issue 18)
@pytest.mark.parametrize(
    "completion, expected_answer, expected_format",
    [
        ("12 + 35 = 47. So the answer is 47.", "47", 1.0),
        ("The answer is **47**", "47", 1.0),  # markdown bold closes the text
        ("It is -5", "-5", 1.0),  # a free-standing minus sign belongs to the number
        ("12-5", "5", 1.0),  # ... but not the operator of an expression
        ("x\u22123", "3", 1.0),  # nor one after a letter
        ("Total: 1,234.5", "1,234.5", 1.0),
        ("1,234.5 apples in all", "1,234.5", 0.0),  # answer read; format asks to end on it
        ("47 is it, because 4 + 3 = 7 and more words", "7", 0.0),  # the LAST number, not the first
        ("so \\boxed{47} and 3 more", "47", 1.0),  # a box marks the answer: boxed wins
        ("\\boxed{5} or \\boxed{6} 7", None, 0.0),  # two boxed values is a hedge, no fallback
        ("<answer>9</answer> then 10", "9", 1.0),  # tags win
        ("work\n#### 8\nbye 9", "8", 1.0),
        ("#### 5\n#### 6 then 7", None, 0.0),  # two #### is broken, no fallback
        ("no digits at all", None, 0.0),
        ("a" + "9" * 101, None, 0.0),  # a number longer than MAX_NUMBER_CHARS is spraying
        ("is 12,34", "34", 1.0),  # a malformed thousands group: the well-formed tail is the number
    ],
)
def test_final_style_reads_the_last_number(completion, expected_answer, expected_format):
    assert extract_answer(completion, style="final") == expected_answer
    assert format_reward(completion, style="final") == expected_format
    if expected_answer is not None:
        assert correctness(completion, expected_answer.replace(",", ""), style="final") == 1.0


def test_final_style_is_only_a_fallback_of_its_own_style():
    # the other styles keep refusing an unmarked number
    for style in ("reasoning", "think", "plain"):
        assert extract_answer("So the answer is 47.", style=style) is None
    assert correctness("So the answer is 47.", "47", style="final") == 1.0
    assert correctness("So the answer is 46.", "47", style="final") == 0.0


def test_final_style_finds_a_number_two_megabytes_from_the_end():
    text = "7 " + "a" * 2_000_000  # found by str.rfind; the regex only sees a short window
    assert extract_answer(text, style="final") == "7"
    assert format_reward(text, style="final") == 0.0


# --------------------------------------------------------------------------------------------------
# countdown verifier: near misses
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expression, expected",
    [
        ("(25 - 5) * 4 + 3", 1.0),  # = 83
        ("3 + 4 * (25 - 5)", 1.0),
        ("((3)) + ((4 * ((25 - 5))))", 1.0),  # redundant parentheses are fine
        ("25*4-5*3-2", 0.0),  # 2 is not given
        ("(25 - 5) * 4 + 3 + 0", 0.0),  # 0 not given
        ("(25 - 5) * 4 + 4", 0.0),  # 4 used twice, 3 unused
        ("(25 - 5) * 4", 0.0),  # 3 unused (exactly-once convention)
        ("25 * 4 - 5 * 3", 0.0),  # all used, value 85 != 83
        ("(25 - 5) * 4 + 3 = 83", 0.0),  # no "=" allowed
        ("(25 - 5) * 4 + 3 foo", 0.0),  # trailing garbage
        ("(25 - 5) * 4 + 3)", 0.0),  # unbalanced
        ("((25 - 5) * 4 + 3", 0.0),
        ("(25 - 5) * 4 + 3.0", 0.0),  # no decimals
        ("-(5 - 25) * 4 + 3", 0.0),  # no unary minus
        ("(25 - 5) x 4 + 3", 0.0),
        ("(25 - 5) ** 4 + 3", 0.0),
        ("__import__('os').system('true')", 0.0),
        ("abs(25 - 5) * 4 + 3", 0.0),  # function calls
        ("(25 - 5) * 04 + 3", 0.0),  # leading-zero literal
        ("(25 - 5) * \u0664 + 3", 0.0),  # Arabic-Indic digit four: ASCII digits only
        ("", 0.0),
    ],
)
def test_countdown_near_misses(expression, expected):
    assert countdown_reward(f"<answer>{expression}</answer>", [25, 5, 4, 3], 83) == expected


def test_countdown_rational_arithmetic_and_division():
    # Intermediate fractions are allowed, exactly: (1 / 3 + 1) * 3 = 4 with 1, 3, 1, 3.
    assert countdown_reward("<answer>(1 / 3 + 1) * 3</answer>", [1, 3, 1, 3], 4) == 1.0
    # Floats would give 0.1 + 0.2 != 0.3 style surprises; Fractions are exact: 6/4 * 2 = 3.
    assert countdown_reward("<answer>6 / 4 * 2</answer>", [6, 4, 2], 3) == 1.0
    assert countdown_reward("<answer>6 / (4 - 4) + 2</answer>", [6, 4, 4, 2], 2) == 0.0  # / 0
    assert countdown_reward("<answer>7 / 2</answer>", [7, 2], 3) == 0.0  # 3.5 != 3, no truncation


def test_countdown_bounds_length_and_depth():
    depth = rewards.MAX_EXPR_DEPTH
    ok = "(" * depth + "1 + 2" + ")" * depth
    deep = "(" * (depth + 1) + "1 + 2" + ")" * (depth + 1)
    assert countdown_reward(f"<answer>{ok}</answer>", [1, 2], 3) == 1.0
    assert countdown_reward(f"<answer>{deep}</answer>", [1, 2], 3) == 0.0
    long_sum = " + ".join(["1"] * 100)  # 397 characters > MAX_EXPR_CHARS
    assert countdown_reward(f"<answer>{long_sum}</answer>", [1] * 100, 100) == 0.0
    assert countdown_reward("<answer>" + "(" * 100_000 + "</answer>", [1], 1) == 0.0


# --------------------------------------------------------------------------------------------------
# math_reward (math_verify + fallback), and it runs outside the main thread
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        ("<think>t</think> \\boxed{\\dfrac{9}{7}}", "\\frac{9}{7}", 1.0),
        ("<think>t</think> <answer>9/7</answer>", "\\frac{9}{7}", 1.0),
        ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("\\boxed{10.0}", "10", 1.0),
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("\\boxed{3}", "2", 0.0),
        ("\\boxed{\\frac{9}{8}}", "\\frac{9}{7}", 0.0),
        ("\\boxed{2} or \\boxed{3}", "2", 0.0),  # hedge
        ("no answer", "2", 0.0),
        ("\\boxed{\\frac{1}{", "2", 0.0),
        ("\\boxed{14400}", "14,\\!400", 1.0),  # MATH's LaTeX thousands separator
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
        # Power towers: sympy would evaluate 9^387420489 in one uninterruptible C call; the
        # _magnitude_bits screen keeps them away from math_verify.verify, so these return at once.
        ("\\boxed{9^{9^{9^{9}}}}", "2", 0.0),
        ("\\boxed{9**9**9**9}", "2", 0.0),
        ("\\boxed{(x+1)^{9999}}", "2", 0.0),
        ("\\boxed{" + "1+" * 200 + "1}", "401", 0.0),  # over MAX_SYMPY_CHARS: string check only
    ],
)
def test_math_reward(completion, gold, expected):
    assert math_reward(completion, gold) == expected


def test_magnitude_bits_screen():
    import sympy
    from math_verify import parse

    def bits(latex):
        return max(rewards._magnitude_bits(x) for x in parse(f"\\boxed{{{latex}}}", parsing_timeout=None) if isinstance(x, sympy.Basic))

    assert bits("255") == 8.0
    assert bits("\\frac{3}{4}") == 5.0  # 2 bits + 3 bits
    assert bits("2^{2005}") <= rewards.MAX_SYMPY_BITS
    assert bits("x^{2}+y") <= 64
    for tower in ("9^{9^{9^{9}}}", "(9^{9999})^{9999}", "99999!", "(x+1)^{9999}", "10^{10^{10}}"):
        assert bits(tower) > rewards.MAX_SYMPY_BITS, tower


def test_math_reward_and_combine_work_off_the_main_thread():
    # math_verify's own signal.alarm timeouts raise ValueError outside the main thread; ours do not.
    results = {}

    def work():
        results["math"] = math_reward("\\boxed{\\dfrac{9}{7}}", "\\frac{9}{7}")
        results["combine"] = combine(
            ["\\boxed{\\dfrac{9}{7}}"], ["\\frac{9}{7}"], weights={"math": 1.0},
            verifiers={"math": lambda c, g: math_reward(c, g)},
        )

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results["math"] == 1.0
    rewards_, _, stats = results["combine"]
    assert rewards_.tolist() == [1.0] and stats["verifier_errors"] == 0 and stats["verifier_timeouts"] == 0


# --------------------------------------------------------------------------------------------------
# overlong_penalty (DAPO)
# --------------------------------------------------------------------------------------------------
def test_overlong_penalty_values():
    kw = dict(max_length=100, cache_length=20)
    assert [overlong_penalty(n, **kw) for n in (0, 80, 85, 90, 99, 100, 101, 10_000)] == [
        0.0, 0.0, -0.25, -0.5, -0.95, -1.0, -1.0, -1.0,
    ]
    assert overlong_penalty(100, max_length=100, cache_length=0) == 0.0  # hard step
    assert overlong_penalty(101, max_length=100, cache_length=0) == -1.0
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(1, max_length=10, cache_length=11)


# --------------------------------------------------------------------------------------------------
# combine: weights, components, error and timeout counting
# --------------------------------------------------------------------------------------------------
def test_combine_default_verifiers_weights_and_components():
    completions = [tagged("5"), tagged("6"), "<answer>5</answer>", "garbage"]
    out, components, stats = combine(completions, ["5"] * 4, weights={"correctness": 1.0, "format": 0.5})
    assert out.dtype == np.float32 and out.shape == (4,)
    np.testing.assert_array_equal(components["correctness"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(components["format"], [1.0, 1.0, 0.25, 0.0])
    np.testing.assert_array_equal(out, [1.5, 0.5, 1.125, 0.0])
    assert stats["verifier_errors"] == 0 and stats["verifier_timeouts"] == 0


def test_combine_extra_components_and_unknown_names():
    penalties = [overlong_penalty(n, max_length=10, cache_length=4) for n in (5, 8, 12)]  # 0, -.5, -1
    out, components, _ = combine(
        [tagged("1")] * 3, ["1"] * 3, weights={"correctness": 1.0, "overlong": 0.5},
        extra={"overlong": penalties},
    )
    np.testing.assert_array_equal(components["overlong"], [0.0, -0.5, -1.0])
    np.testing.assert_array_equal(out, [1.0, 0.75, 0.5])
    with pytest.raises(ValueError, match="'typo'"):
        combine(["x"], ["1"], weights={"typo": 1.0})
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        combine(["x"], ["1"], weights={"overlong": 1.0}, extra={"overlong": [0.0, 1.0]})
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        combine(["x", "y"], ["1"], weights={"correctness": 1.0})


def test_combine_counts_errors_and_non_finite_values():
    def flaky(completion, gold):
        if completion == "raise":
            raise RuntimeError("broken verifier")
        if completion == "nan":
            return float("nan")
        if completion == "text":
            return "not a number"
        return 1.0

    out, components, stats = combine(
        ["ok", "raise", "nan", "text", "ok"], [None] * 5, weights={"flaky": 2.0}, verifiers={"flaky": flaky}
    )
    np.testing.assert_array_equal(components["flaky"], [1.0, 0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(out, [2.0, 0.0, 0.0, 0.0, 2.0])
    assert stats["verifier_errors"] == 3 and stats["verifier_timeouts"] == 0


def _spin(completion, gold):
    if completion == "slow":
        try:  # a verifier that swallows exceptions must still time out
            while True:
                pass
        except Exception:
            return 1.0
    return 1.0


def test_combine_times_out_a_spinning_verifier_in_the_main_thread():
    assert threading.current_thread() is threading.main_thread()
    out, components, stats = combine(
        ["fast", "slow", "fast"], [None] * 3, weights={"spin": 1.0}, verifiers={"spin": _spin}, time_limit=0.2
    )
    np.testing.assert_array_equal(out, [1.0, 0.0, 1.0])
    assert stats["verifier_timeouts"] == 1 and stats["verifier_errors"] == 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # nothing left armed


def test_combine_counts_a_timeout_inside_a_verifier_with_its_own_longer_limit():
    # math_reward runs sympy under its own (5 s) limit; combine's shorter one must still win and
    # be counted, not swallowed by the inner limit or by the verifier's `except Exception`.
    def nested(completion, gold):
        def spin():
            while True:
                pass

        try:
            return rewards._call_with_time_limit(spin, 10.0)[0]
        except Exception:
            return 1.0

    start = time.monotonic()
    out, _, stats = combine(["a"], [None], weights={"n": 1.0}, verifiers={"n": nested}, time_limit=0.2)
    assert out.tolist() == [0.0] and stats["verifier_timeouts"] == 1
    assert time.monotonic() - start < 5.0  # the inner 10 s limit did not apply
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_combine_off_main_thread_counts_slow_calls_as_timeouts():
    # No signals off the main thread: a slow call finishes, then is discarded and counted.
    def slow(completion, gold):
        if completion == "slow":
            time.sleep(0.3)
        return 1.0

    results = {}
    thread = threading.Thread(
        target=lambda: results.update(
            out=combine(["slow", "fast"], [None] * 2, weights={"s": 1.0}, verifiers={"s": slow}, time_limit=0.1)
        )
    )
    thread.start()
    thread.join()
    out, _, stats = results["out"]
    np.testing.assert_array_equal(out, [0.0, 1.0])
    assert stats["verifier_timeouts"] == 1


def test_time_limit_preserves_an_outer_timer():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        value, timed_out = rewards._call_with_time_limit(lambda: 42, 1.0)
        assert (value, timed_out) == (42, False)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 3.0 < remaining <= 5.0  # re-armed with what was left of the outer 5 s
        # An outer deadline that comes first is delivered to the outer handler, not ours.
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        deadline = time.monotonic() + 0.5

        def wait():
            while time.monotonic() < deadline and not fired:
                pass
            return "done"

        assert rewards._call_with_time_limit(wait, 2.0) == ("done", False)
        assert fired == [True]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------------------------------
# hypothesis properties
# --------------------------------------------------------------------------------------------------
@given(st.integers(min_value=-10**30, max_value=10**30))
def test_integers_are_correct_in_every_spelling(n):
    assert correctness(tagged(str(n)), str(n)) == 1.0
    assert correctness(tagged(f"{n:,}"), str(n)) == 1.0
    assert correctness(tagged(f"{n}.00"), f"{n:,}") == 1.0
    assert correctness(tagged(str(n).replace("-", "\u2212")), str(n)) == 1.0
    assert correctness(tagged(str(n + 1)), str(n)) == 0.0
    assert correctness(tagged(f"{n} or {n + 1}"), str(n)) == 0.0


@settings(deadline=None)  # the first math_reward call imports sympy
@given(st.text(), st.sampled_from(rewards.STYLES))
def test_verifiers_never_raise_on_arbitrary_text(text, style):
    for completion in (text, f"<answer>{text}</answer>", f"<think>{text}</think>\\boxed{{{text}}}"):
        assert correctness(completion, "5", style=style) in (0.0, 1.0)
        assert 0.0 <= format_reward(completion, style=style) <= 1.0
        assert countdown_reward(completion, [1, 2, 3], 6, style=style) in (0.0, 1.0)
        assert extract_answer(completion, style=style) is None or isinstance(extract_answer(completion, style=style), str)
    assert math_reward(text, "5", style=style) in (0.0, 1.0)
    assert math_reward(f"\\boxed{{{text}}}", "5", style="plain") in (0.0, 1.0)
