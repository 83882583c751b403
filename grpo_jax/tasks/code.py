"""Procedural code problems: "Write a Python function `add_k(x)` that returns x plus 7."

A problem is a template (`TEMPLATES`: integers, strings, lists, dicts) and its parameters. The
template's reference solution is OUR source text with the parameters substituted as literals; it is
compiled and called in the trusted process at generation time to compute the expected value of each
hidden test input, so the hidden tests are MBPP-style assert strings (`assert add_k(3) == 10`) that
the sandbox judges against the model's program (grpo_jax.sandbox). Model output is never compiled
or run here.

`example(seed, index, split=...)` is a pure function (hashes via `stable_ints`, as arithmetic).
Held-out split: a problem is in "eval" iff the hash of its prompt text falls in bucket 0 of 10
(`in_eval_split(("code", prompt))`); "train" rejects those prompts and "eval" accepts only them, so
no problem (same template and parameters, hence the same text and the same tests) is in both splits,
for every seed. The hidden test inputs are a function of the prompt alone.

Rewards (wired by name in grpo_jax.rewards.from_config):

    code_tests(c, e)   = passed / total of e.meta["tests"] on the last fenced Python block of c
                         (all_or_nothing: 1 iff all pass); 0 with no block
    code_format(c, e)  = 1 iff c holds exactly one fenced code block (exactly two ``` fences)

`extract_code` is a linear scan with `str.find` (no regex over the completion): it pairs ``` fences
in order (1st opens, 2nd closes, ...), and returns the content of the last pair whose opening line's
language tag is empty or Python. More than `MAX_FENCES` fences or a block longer than
`MAX_CODE_CHARS` is None (spraying). The sandbox pool is module-level, started on first use and
closed at exit (`sandbox_pool`).

Records (task "code" with task.data_path): MBPP / HumanEval-style JSONL (or any layout the generic
reader grpo_jax.tasks.records takes), one problem per record: `prompt` (or MBPP's `text`) and either
`tests` / `test_list` (assert strings) or HumanEval's `test` + `entry_point` (`humaneval_tests`
turns `check`'s asserts into assert strings). Train and held-out come from task.train_split /
task.eval_split, disjoint by prompt text (`records_task`).
"""
from __future__ import annotations

import ast
import atexit
import threading
from typing import Any, Callable

from grpo_jax.tasks.common import Example, field, in_eval_split, stable_ints

SPLITS = ("train", "eval")
FENCE = "```"
MAX_FENCES = 64  # more fences than this in one completion is spraying
MAX_CODE_CHARS = 20_000  # a longer block is not a small function: None
PYTHON_TAGS = ("", "python", "python3", "py")
NUM_TESTS = 6
INSTRUCTION = "Answer with the complete function in one fenced ```python code block."
_MAX_ATTEMPTS = 10_000

# (function name, signature, description with {k}/{c}/..., reference body with the same fields,
#  parameter spec {field: (kind, low, high)}, input kinds of the arguments)
# kinds of parameters: "int" in [low, high]; "char" from `_CHARS`; "word" from `_WORDS`.
# kinds of inputs: "int" [-60, 200], "nat" [0, 300], "str" (letters of `_CHARS`), "list" (ints),
# "dict" (str -> int), "key" (a letter key).
_CHARS = "abcdexyz"
_WORDS = ("ing", "ed", "er", "ly", "s", "ness", "ful", "less")
TEMPLATES: tuple[tuple, ...] = (
    # integers
    ("add_k", "x", "returns x plus {k}", "return x + {k}", {"k": ("int", 2, 999)}, ("int",)),
    ("mul_k", "x", "returns x times {k}", "return x * {k}", {"k": ("int", 2, 999)}, ("int",)),
    ("sub_k", "x", "returns x minus {k}", "return x - {k}", {"k": ("int", 2, 999)}, ("int",)),
    ("mod_k", "x", "returns the remainder of the non-negative integer x divided by {k}",
     "return x % {k}", {"k": ("int", 2, 199)}, ("nat",)),
    ("is_multiple", "x", "returns True if x is divisible by {k} and False otherwise",
     "return x % {k} == 0", {"k": ("int", 2, 99)}, ("int",)),
    ("clamp_max", "x", "returns x, but at most {k}", "return min(x, {k})", {"k": ("int", -50, 250)}, ("int",)),
    ("digit_sum_plus", "x", "returns the sum of the decimal digits of abs(x), plus {k}",
     "return sum(int(d) for d in str(abs(x))) + {k}", {"k": ("int", 0, 999)}, ("int",)),
    ("poly", "x", "returns {a}*x*x + {b}", "return {a} * x * x + {b}",
     {"a": ("int", 2, 30), "b": ("int", 1, 99)}, ("int",)),
    ("sum_from", "n", "returns the sum of the integers from {k} to n inclusive (0 if n < {k})",
     "return sum(range({k}, n + 1))", {"k": ("int", 0, 300)}, ("nat",)),
    ("count_multiples", "n", "returns how many integers in 1..n (inclusive) are divisible by {k}",
     "return max(n, 0) // {k}", {"k": ("int", 2, 99)}, ("nat",)),
    # strings
    ("repeat_k", "s", "returns the string s repeated {k} times", "return s * {k}",
     {"k": ("int", 2, 60)}, ("str",)),
    ("pad_left", "s", "returns s padded on the left with the character {c!r} to length {k} "
     "(s unchanged if it is already that long)", "return s.rjust({k}, {c!r})",
     {"c": ("char",), "k": ("int", 3, 60)}, ("str",)),
    ("count_char", "s", "returns how many times the character {c!r} occurs in s", "return s.count({c!r})",
     {"c": ("char",)}, ("str",)),
    ("replace_char", "s", "returns s with every {c!r} replaced by {d!r}", "return s.replace({c!r}, {d!r})",
     {"c": ("char",), "d": ("char",)}, ("str",)),
    ("first_k", "s", "returns the first {k} characters of s (all of s if it is shorter)",
     "return s[:{k}]", {"k": ("int", 1, 60)}, ("str",)),
    ("drop_last_k", "s", "returns s without its last {k} characters (the empty string if s is shorter)",
     "return s[:max(len(s) - {k}, 0)]", {"k": ("int", 1, 60)}, ("str",)),
    ("add_suffix", "s", "returns s followed by {w!r}, unless s already ends with {w!r}, then s itself",
     "return s if s.endswith({w!r}) else s + {w!r}", {"w": ("word",)}, ("str",)),
    ("every_kth", "s", "returns every {k}-th character of s, starting with the first (s[0], s[{k}], ...)",
     "return s[::{k}]", {"k": ("int", 2, 60)}, ("str",)),
    ("rotate_left", "s", "returns s rotated left by {k} positions (the first {k} characters, modulo "
     "len(s), moved to the end; the empty string stays empty)",
     "return s[{k} % len(s):] + s[:{k} % len(s)] if s else s", {"k": ("int", 1, 60)}, ("str",)),
    ("wrap_char", "s", "returns s with the character {c!r} added at both ends", "return {c!r} + s + {c!r}",
     {"c": ("char",)}, ("str",)),
    # lists
    ("add_to_all", "xs", "returns a new list with {k} added to each element of the list of integers xs",
     "return [x + {k} for x in xs]", {"k": ("int", 1, 999)}, ("list",)),
    ("filter_greater", "xs", "returns the elements of the list xs that are greater than {k}, in order",
     "return [x for x in xs if x > {k}]", {"k": ("int", -20, 60)}, ("list",)),
    ("count_less", "xs", "returns how many elements of the list xs are less than {k}",
     "return sum(1 for x in xs if x < {k})", {"k": ("int", -20, 60)}, ("list",)),
    ("scaled_sum", "xs", "returns {k} times the sum of the elements of the list xs",
     "return {k} * sum(xs)", {"k": ("int", 2, 999)}, ("list",)),
    ("take_k", "xs", "returns a list of the first {k} elements of xs (all of them if there are fewer)",
     "return list(xs[:{k}])", {"k": ("int", 1, 60)}, ("list",)),
    ("max_or", "xs", "returns the largest element of the list xs, or {k} if xs is empty",
     "return max(xs) if xs else {k}", {"k": ("int", -999, 999)}, ("list",)),
    ("chunk_sums", "xs", "returns the list of the sums of consecutive chunks of {k} elements of xs "
     "(the last chunk may be shorter)", "return [sum(xs[i:i + {k}]) for i in range(0, len(xs), {k})]",
     {"k": ("int", 2, 60)}, ("list",)),
    ("index_of", "xs", "returns the index of the first occurrence of {k} in the list xs, or -1 if it "
     "does not occur", "return xs.index({k}) if {k} in xs else -1", {"k": ("int", -10, 30)}, ("list",)),
    # dicts
    ("get_or", "d, key", "returns d[key] if the dictionary d has the key, else {k}",
     "return d.get(key, {k})", {"k": ("int", -999, 999)}, ("dict", "key")),
    ("scale_values", "d", "returns a new dictionary with the same keys as d and each value multiplied by {k}",
     "return {{key: v * {k} for key, v in d.items()}}", {"k": ("int", 2, 999)}, ("dict",)),
    ("keys_above", "d", "returns the sorted list of the keys of the dictionary d whose value is greater "
     "than {k}", "return sorted(key for key, v in d.items() if v > {k})", {"k": ("int", -20, 60)}, ("dict",)),
    ("count_long_words", "s", "returns a dictionary mapping each word of s (split on whitespace) of at "
     "least {k} characters to the number of times it occurs",
     "out = {{}}\n    for w in s.split():\n        if len(w) >= {k}:\n            out[w] = out.get(w, 0) + 1\n"
     "    return out", {"k": ("int", 1, 40)}, ("words",)),
)


class _Draws:
    """Uniform draws from a fixed hash stream (`stable_ints`): the same on every machine."""

    def __init__(self, key: tuple):
        self.key, self.block, self.buf = key, 0, []

    def below(self, n: int) -> int:
        if not self.buf:
            self.buf = stable_ints(self.key + (self.block,), 64)
            self.block += 1
        return self.buf.pop() % n

    def between(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)

    def text(self, alphabet: str, max_len: int) -> str:
        return "".join(alphabet[self.below(len(alphabet))] for _ in range(self.below(max_len + 1)))


def _argument(kind: str, draws: _Draws) -> Any:
    if kind == "int":
        return draws.between(-60, 200)
    if kind == "nat":
        return draws.between(0, 300)
    if kind == "str":
        return draws.text(_CHARS, 12)
    if kind == "list":
        return [draws.between(-20, 60) for _ in range(draws.below(9))]
    if kind == "dict":
        return {_CHARS[i]: draws.between(-20, 60) for i in range(len(_CHARS)) if draws.below(2)}
    if kind == "key":
        return _CHARS[draws.below(len(_CHARS))]
    if kind == "words":
        return " ".join(draws.text("ab", 4) or "a" for _ in range(draws.below(8)))
    raise ValueError(f"unknown argument kind {kind!r}")


def _parameters(spec: dict, draws: _Draws) -> dict:
    out = {}
    for name, (kind, *bounds) in spec.items():
        if kind == "int":
            out[name] = draws.between(*bounds)
        elif kind == "char":
            out[name] = _CHARS[draws.below(len(_CHARS))]
        else:  # "word"
            out[name] = _WORDS[draws.below(len(_WORDS))]
    return out


def problem(template: int, params: dict) -> tuple[str, str, str, list[str]]:
    """(function name, prompt, reference source, hidden tests) of `TEMPLATES[template]` with
    `params`. The tests' inputs are a function of the prompt; their expected values come from
    running the reference (our code) here."""
    name, signature, description, body, _, kinds = TEMPLATES[template]
    prompt = (f"Write a Python function `{name}({signature})` that {description.format(**params)}.\n"
              f"{INSTRUCTION}")
    source = f"def {name}({signature}):\n    {body.format(**params)}\n"
    namespace: dict = {}
    exec(compile(source, f"<reference {name}>", "exec"), namespace)  # trusted: our template
    reference: Callable = namespace[name]
    draws, tests, seen = _Draws(("code-tests", prompt)), [], set()
    for _ in range(4 * NUM_TESTS):
        if len(tests) == NUM_TESTS:
            break
        args = tuple(_argument(kind, draws) for kind in kinds)
        call = f"{name}({', '.join(map(repr, args))})"
        if call not in seen:
            seen.add(call)
            tests.append(f"assert {call} == {reference(*args)!r}")
    return name, prompt, source, tests


def example(seed: int, index: int, *, split: str = "train") -> Example:
    """Problem `index` of `split` for `seed`: answer = the reference source; meta "name" (the
    function), "tests" (MBPP-style assert strings), "template" (its index in TEMPLATES), "params"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    for attempt in range(_MAX_ATTEMPTS):
        draws = _Draws(("code", seed, split, index, attempt))
        template = draws.below(len(TEMPLATES))
        params = _parameters(TEMPLATES[template][4], draws)
        name, prompt, source, tests = problem(template, params)
        if in_eval_split(("code", prompt)) == (split == "eval"):
            return Example(prompt, source, {"id": f"code-{split}-{seed}-{index}", "name": name, "tests": tests,
                                            "template": template, "params": params})
    raise RuntimeError(f"no {split} code problem found in {_MAX_ATTEMPTS} attempts")


# --------------------------------------------------------------------------------------------------
# MBPP / HumanEval-style records (task "code" with task.data_path)
# --------------------------------------------------------------------------------------------------
def humaneval_tests(test: str, entry_point: str, *, where: str = "") -> list[str]:
    """HumanEval's `test` (a `def check(candidate): assert candidate(...) == ...`) as MBPP-style
    assert strings on `entry_point`: every top-level `assert` of `check`'s body, `candidate`
    renamed. (The sandbox judges assert statements, not a `check` function called on the program.)
    Statements other than asserts in `check` are dropped; ValueError naming `where` if none is left."""
    tree = ast.parse(test)
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise ValueError(f"{where}: field 'test' defines no `check(candidate)` function")
    arg = checks[0].args.args[0].arg if checks[0].args.args else "candidate"

    class Rename(ast.NodeTransformer):
        def visit_Name(self, node):
            return ast.copy_location(ast.Name(entry_point, node.ctx), node) if node.id == arg else node

    out = [ast.unparse(Rename().visit(n)) for n in checks[0].body if isinstance(n, ast.Assert)]
    if not out:
        raise ValueError(f"{where}: field 'test': `check` holds no top-level assert")
    return out


def record_example(record: dict, *, where: str, ident: str) -> Example:
    """One MBPP / HumanEval-style record -> Example: `prompt` (MBPP's `text` too) and either
    `tests` / `test_list` (assert strings) or `test` + `entry_point` (HumanEval: `humaneval_tests`).
    prompt = the record's prompt and `INSTRUCTION`; answer = the record's solution if it has one
    (`code`, or `prompt` + `canonical_solution`), else ""."""
    key = "prompt" if "prompt" in record else "text"
    text = field(record, key, str, where)
    tests_key = next((k for k in ("tests", "test_list") if k in record), None)
    if tests_key is not None:
        tests = field(record, tests_key, list, where)
        if not tests or not all(isinstance(t, str) and "assert" in t for t in tests):
            raise ValueError(f"{where}: field {tests_key!r} must be a non-empty list of assert strings")
        name = field(record, "entry_point", str, where) if "entry_point" in record else ""
    else:
        name = field(record, "entry_point", str, where)
        tests = humaneval_tests(field(record, "test", str, where), name, where=where)
    answer = record.get("code") or (text + record["canonical_solution"] if "canonical_solution" in record else "")
    return Example(f"{text.strip()}\n{INSTRUCTION}", answer if isinstance(answer, str) else "",
                   {"id": ident, "name": name, "tests": list(tests)})


def load_records(path, split: str) -> list[Example]:
    """The code problems of one split of a records file or directory (any layout
    grpo_jax.tasks.records reads: JSONL, JSON, parquet, HF directories)."""
    from grpo_jax.tasks import records  # the generic reader

    source, prefix = records.locate(path, split=split)
    return [record_example(r, where=where, ident=f"{prefix}/{i}")
            for i, (where, r) in enumerate(records.iter_records(source, split=split))]


# --------------------------------------------------------------------------------------------------
# Extraction and rewards
# --------------------------------------------------------------------------------------------------
def _blocks(text: str) -> list[tuple[str, str]] | None:
    """(language tag, content) of every fenced block, fences paired in order; None when there are
    more than MAX_FENCES fences. Linear: one `str.count` and `str.find` calls that only move forward."""
    if text.count(FENCE) > MAX_FENCES:
        return None
    out, pos = [], 0
    while (open_at := text.find(FENCE, pos)) >= 0:
        line_end = text.find("\n", open_at)
        if line_end < 0:
            break  # an opening fence with no content line
        close_at = text.find(FENCE, line_end)
        if close_at < 0:
            break  # unterminated
        out.append((text[open_at + len(FENCE): line_end].strip().lower(), text[line_end + 1: close_at]))
        pos = close_at + len(FENCE)
    return out


def extract_code(completion: str) -> str | None:
    """The last fenced block of `completion` tagged Python (```python, ```py, ```python3) or untagged,
    or None (no such block, too many fences, or a block over MAX_CODE_CHARS)."""
    if not isinstance(completion, str):
        return None
    blocks = _blocks(completion)
    for tag, content in reversed(blocks or []):
        if tag in PYTHON_TAGS:
            return content if len(content) <= MAX_CODE_CHARS and content.strip() else None
    return None


def code_format(completion: str, example: Example | None = None) -> float:
    """1.0 iff `completion` holds exactly one fenced code block (exactly two fences), else 0.0."""
    if not isinstance(completion, str) or completion.count(FENCE) != 2:
        return 0.0
    return 1.0 if len(_blocks(completion) or []) == 1 else 0.0


_pool: dict[str, Any] = {}
_pool_lock = threading.Lock()


def sandbox_pool(workers: int = 2):
    """The module's one `sandbox.Sandbox`, started on first use (every reward call reuses it) and
    closed at interpreter exit."""
    with _pool_lock:
        if "sandbox" not in _pool:
            from grpo_jax import sandbox

            _pool["sandbox"] = sandbox.Sandbox(workers)
            atexit.register(_pool["sandbox"].close)
        return _pool["sandbox"]


def require_sandbox(key: str) -> None:
    """Start the pool now (at set-up, before any step): where the sandbox cannot run, a ConfigError
    naming `key`, instead of every reward call failing into a verifier error scored 0 (a run that
    would learn nothing)."""
    from grpo_jax import ConfigError
    from grpo_jax.sandbox import SandboxUnavailable

    try:
        sandbox_pool()
    except SandboxUnavailable as error:
        raise ConfigError(f"config key `{key}` needs the code sandbox, which cannot run here: {error}") from error


def code_tests(completion: str, example: Example, *, all_or_nothing: bool = False,
               timeout_s: float = 0.5) -> float:
    """Fraction of `example.meta["tests"]` the last Python block of `completion` passes in the
    sandbox (all_or_nothing: 1.0 iff every test passes); 0.0 with no block. `timeout_s` bounds the
    program's wall clock: keep it under rewards.timeout_seconds so the sandbox, not the verifier
    alarm, ends a runaway program."""
    code = extract_code(completion)
    if code is None:
        return 0.0
    # If the verifier's alarm (rewards.combine) interrupts the run, `Sandbox.run` replaces the busy
    # worker, so no result is left unread for the next program.
    result = sandbox_pool().run(code, example.meta["tests"], timeout_s=timeout_s)
    if all_or_nothing:
        return 1.0 if result.total and result.passed == result.total else 0.0
    return result.fraction
