"""Countdown (as in TinyZero): reach a target with + - * / using each given number exactly once.

`example(seed, index)` is a pure function of (seed, index) (hash-derived draws, `stable_ints`). It
draws `num_numbers` numbers in [1, max_number], then combines random pairs of the pool with random
operators until one value is left; that value is the target, so at least one solution exists by
construction. Every intermediate value is a non-negative integer (subtraction takes larger - smaller,
division only when exact and by a non-zero divisor), so the reference is valid under both the
strict integer rules and `rewards.countdown_reward`'s exact rational rules. Draws whose target falls
outside [1, max_target] are rejected and redrawn (next attempt).

Held-out split: by hash of (sorted numbers, target), seed-independent, 10% eval (`in_eval_split`).
"""
from __future__ import annotations

from grpo_jax.tasks.common import Example, in_eval_split, stable_ints

SPLITS = ("train", "eval")
_MAX_ATTEMPTS = 10_000


def _combine(x: int, y: int, op: str) -> tuple[int, int, int] | None:
    """(left, right, value) of applying `op` to {x, y} with integer, non-negative intermediates."""
    if op == "+":
        return x, y, x + y
    if op == "*":
        return x, y, x * y
    if op == "-":
        return (x, y, x - y) if x >= y else (y, x, y - x)
    if y != 0 and x % y == 0:
        return x, y, x // y
    if x != 0 and y % x == 0:
        return y, x, y // x
    return None


def example(
    seed: int,
    index: int,
    *,
    num_numbers: int = 4,
    max_number: int = 100,
    max_target: int = 100,
    split: str = "train",
) -> Example:
    """Problem `index` of `split`. answer = one reference expression (e.g. "(44 - 19) + 35");
    meta holds "numbers" (list[int], draw order), "target" (int), "solution" (= answer) and
    "reasoning" (the steps, e.g. "44 - 19 = 25, 25 + 35 = 60"). Any valid expression scores 1.0
    under `rewards.countdown_reward(completion, meta["numbers"], meta["target"])`."""
    if num_numbers < 2:
        raise ValueError(f"num_numbers must be >= 2, got {num_numbers}")
    if max_number < 1 or max_target < 1:
        raise ValueError(f"max_number and max_target must be >= 1, got {max_number=} {max_target=}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    for attempt in range(_MAX_ATTEMPTS):
        u = iter(stable_ints(("countdown", seed, split, num_numbers, max_number, max_target, index, attempt), 5 * num_numbers))
        numbers = [1 + next(u) % max_number for _ in range(num_numbers)]
        pool = [(n, str(n)) for n in numbers]  # (value, expression)
        steps = []
        while len(pool) > 1:
            i = next(u) % len(pool)
            x_value, x_expr = pool.pop(i)
            j = next(u) % len(pool)
            y_value, y_expr = pool.pop(j)
            op = "+-*/"[next(u) % 4]
            combined = _combine(x_value, y_value, op)
            if combined is None:  # inexact division: add instead, keeps the draw count fixed
                op, combined = "+", (x_value, y_value, x_value + y_value)
            left, right, value = combined
            left_expr, right_expr = (x_expr, y_expr) if (left, right) == (x_value, y_value) else (y_expr, x_expr)
            steps.append(f"{left} {op} {right} = {value}")
            pool.append((value, f"({left_expr} {op} {right_expr})"))
        target, expression = pool[0]
        if not 1 <= target <= max_target:
            continue
        if in_eval_split(("countdown", tuple(sorted(numbers)), target)) == (split == "eval"):
            break
    else:
        raise ValueError(f"no {split} countdown problem found after {_MAX_ATTEMPTS} draws")
    solution = expression[1:-1]  # drop the outermost parentheses
    prompt = (
        f"Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
        "arithmetic operations (+, -, *, /) and each number must be used exactly once."
    )
    return Example(
        prompt=prompt,
        answer=solution,
        meta={
            "id": f"countdown/{split}/{seed}/{index}",
            "numbers": numbers,
            "target": target,
            "solution": solution,
            "reasoning": ", ".join(steps),
        },
    )
