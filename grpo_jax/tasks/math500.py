"""MATH (Hendrycks et al. 2021) test set and its MATH-500 subset (PRM800K) from local JSONL.

Gold = the row's `answer` field when present (MATH-500), else the content of the last `\\boxed{...}`
of the solution (MATH). Following PRM800K, `load_train` gives the 4500 MATH test problems that are
not in MATH-500, for training, with MATH-500 held out for evaluation. No TFDS builder exists for MATH.
"""
from __future__ import annotations

import os

from grpo_jax.tasks.common import Example, field, read_jsonl, resolve_file


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text` (braces balanced), or None if there is none.

    For trusted gold solutions: unbounded, unlike the verifier's extraction in `grpo_jax.rewards`.
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for pos in range(start + len("\\boxed"), len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len("\\boxed{") : pos]
    return None


def load(path: str | os.PathLike, split: str = "test") -> list[Example]:
    """Examples from a directory holding `{split}.jsonl` or from a .jsonl file (MATH or MATH-500)."""
    file = resolve_file(path, f"{split}.jsonl")
    examples = []
    for line_number, record in read_jsonl(file):
        where = f"{file}:{line_number}"
        problem = field(record, "problem", str, where)
        solution = field(record, "solution", str, where)
        if "answer" in record:
            gold = field(record, "answer", str, where)
        else:
            gold = last_boxed(solution)
            if gold is None:
                raise ValueError(f"{where}: field 'solution' has no \\boxed{{...}} answer and there is no 'answer' field")
        ident = record.get("unique_id", record.get("idx", len(examples)))
        examples.append(
            Example(
                prompt=problem.strip(),
                answer=gold.strip(),
                meta={
                    "id": f"{file.parent.name}/{ident}",
                    "reasoning": solution,
                    "level": record.get("level"),
                    "subject": record.get("subject", record.get("type")),
                },
            )
        )
    return examples


def load_train(math_path: str | os.PathLike, math500_path: str | os.PathLike) -> list[Example]:
    """MATH test problems not in MATH-500 (4500 with the standard files), matched on problem text."""
    held_out = {example.prompt for example in load(math500_path)}
    return [example for example in load(math_path) if example.prompt not in held_out]
