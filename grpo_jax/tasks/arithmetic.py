"""Synthetic arithmetic, the quick-start task: "What is 12+35?" -> "47".

`example(seed, index)` is a pure function: operands come from a hash of (seed, split, settings,
index, attempt) (`stable_ints`), so example i never depends on examples before it and any run can
resume at any index.

Held-out split: a problem is in "eval" iff the hash of its UNORDERED operand pair {a, b} (seed and
operator ignored) falls in bucket 0 of 10 (`in_eval_split`); "train" rejects those pairs and "eval"
accepts only them (rejection sampling over attempts). So, for every seed and operator set, no (a, b)
pair, nor its swap (b, a), appears in both splits; about 10% of all pairs are held out.
"""
from __future__ import annotations

from grpo_jax.tasks.common import Example, in_eval_split, stable_ints

OPS = "+-*"
SPLITS = ("train", "eval")
WORKINGS = ("equation", "columns")
_MAX_ATTEMPTS = 10_000  # eval accepts ~1 draw in 10; only a degenerate pool can exhaust this


def example(
    seed: int, index: int, *, num_digits: int = 2, ops: str = "+", split: str = "train",
    working: str = "equation",
) -> Example:
    """Problem `index` of `split` for `seed`: operands with exactly `num_digits` digits, an
    operator drawn from `ops` (any of "+-*"). answer = the integer result; meta["reasoning"] is
    the working used as the SFT target: `working="equation"` gives the one line "12+35=47",
    `working="columns"` (addition only) the column sums units first, with the carry written out
    (`column_working`). The problem itself does not depend on `working`."""
    _check_settings(num_digits, ops, working)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    low = 1 if num_digits == 1 else 10 ** (num_digits - 1)
    span = 10**num_digits - low
    for attempt in range(_MAX_ATTEMPTS):
        u = stable_ints(("arithmetic", seed, split, num_digits, ops, index, attempt), 3)
        a, b, op = low + u[0] % span, low + u[1] % span, ops[u[2] % len(ops)]
        if in_eval_split(("arithmetic", num_digits, min(a, b), max(a, b))) == (split == "eval"):
            break
    else:
        raise ValueError(f"no {split} problem found for {num_digits=} {ops=} after {_MAX_ATTEMPTS} draws")
    return _problem(a, op, b, f"arithmetic/{split}/{seed}/{index}", working)


def _check_settings(num_digits: int, ops: str, working: str) -> None:
    if not isinstance(num_digits, int) or num_digits < 1:
        raise ValueError(f"num_digits must be an int >= 1, got {num_digits!r}")
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty string of {OPS!r}, got {ops!r}")
    if working not in WORKINGS:
        raise ValueError(f"working must be one of {WORKINGS}, got {working!r}")
    if working == "columns" and ops != "+":
        raise ValueError(f"working='columns' is defined for addition only (ops='+'), got ops={ops!r}")


def _problem(a: int, op: str, b: int, problem_id: str, working: str) -> Example:
    result = a + b if op == "+" else a - b if op == "-" else a * b
    problem = f"{a}{op}{b}"
    reasoning = column_working(a, b) if working == "columns" else f"{problem}={result}"
    return Example(prompt=f"What is {problem}?", answer=str(result),
                   meta={"id": problem_id, "a": a, "b": b, "op": op, "reasoning": reasoning})


# The most problems `held_out_pool` enumerates: 2-digit operands give 799 per operator; 3-digit
# ~81,000 (use a task.eval_size > 0 sample instead); 4-digit would be millions.
MAX_POOL = 100_000


def held_out_pool(*, num_digits: int = 2, ops: str = "+", working: str = "equation") -> list[Example]:
    """Every distinct held-out problem (the "eval" split, whole), in an order fixed by a hash of the
    problem alone: no seed, so runs with different training seeds report on the same problems, and
    the first N are a uniform sample of the pool. `task.eval_size = 0` selects this for the task."""
    _check_settings(num_digits, ops, working)
    low = 1 if num_digits == 1 else 10 ** (num_digits - 1)
    size = (10**num_digits - low) ** 2 * len(ops) // 10
    if size > MAX_POOL:
        raise ValueError(f"the held-out pool of {num_digits}-digit problems has about {size} problems "
                         f"(> {MAX_POOL}); sample it with task.eval_size > 0 instead")
    problems = []
    for op in ops:
        for a in range(low, 10**num_digits):
            for b in range(low, 10**num_digits):
                if in_eval_split(("arithmetic", num_digits, min(a, b), max(a, b))):
                    problems.append((stable_ints(("pool", num_digits, a, op, b), 1)[0], a, op, b))
    return [_problem(a, op, b, f"arithmetic/pool/{num_digits}/{ops}/{k}", working)
            for k, (_, a, op, b) in enumerate(sorted(problems))]


def column_working(a: int, b: int) -> str:
    """Schoolbook addition as text, one line per column from the units up, the carry added
    explicitly: 47+39 -> "7+9=16\n4+3+1=8" (the answer 86 reads the last line's sum, then the
    units digit of each earlier line in reverse). Every line is a single-digit fact, which a tiny
    model learns far more easily than emitting the sum's digits most-significant first."""
    if a < 0 or b < 0:
        raise ValueError(f"column_working needs non-negative operands, got {a} and {b}")
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        lines.append(f"{x}+{y}" + ("+1" if carry else "") + f"={total}")
        carry = total // 10
    return "\n".join(lines)
