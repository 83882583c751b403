"""GSM8K (Cobbe et al. 2021) from the original JSONL files ({"question", "answer"} per line).

Gold = the text after the last "####" of the answer, stripped, commas (thousands separators)
removed; it must be a plain number, else the record is reported as malformed. meta["reasoning"] is
the solution before "####" with the calculator annotations `<<48/2=24>>` removed (an SFT target).

The answer rule is `records.parse_answer(..., "gsm8k")`, shared with the generic record reader and
the TFDS source (`grpo_jax.tasks.tfds`: the same files prepared offline as a TFDS dataset).
"""
from __future__ import annotations

import os

from grpo_jax.tasks.records import parse_answer
from grpo_jax.tasks.common import Example, field, read_jsonl, resolve_file


def load(path: str | os.PathLike, split: str = "test") -> list[Example]:
    """Examples of `split` ("train" / "test" / "test_socratic") from a directory or a .jsonl file."""
    file = resolve_file(path, f"{split}.jsonl")
    examples = []
    for line_number, record in read_jsonl(file):
        where = f"{file}:{line_number}"
        question = field(record, "question", str, where)
        solution = field(record, "answer", str, where)
        gold, reasoning = parse_answer(solution, "gsm8k", where=where, key="answer")
        examples.append(
            Example(
                prompt=question.strip(),
                answer=gold,
                meta={"id": f"gsm8k/{file.stem}/{len(examples)}", "reasoning": reasoning},
            )
        )
    return examples
