"""GSM8K (Cobbe et al. 2021) from the original JSONL files ({"question", "answer"} per line).

Gold = the text after the last "####" of the answer, stripped, commas (thousands separators)
removed; it must be a plain number, else the record is reported as malformed. meta["reasoning"] is
the solution before "####" with the calculator annotations `<<48/2=24>>` removed (an SFT target).

TFDS: a `gsm8k` builder exists (`import tensorflow_datasets.text`), but it downloads from GitHub, so
this local reader is the real path; no local TFDS builder is provided (the JSONL is small enough to
read whole in ~50 ms).
"""
from __future__ import annotations

import os
import re

from grpo_jax.tasks.common import Example, field, read_jsonl, resolve_file

_GOLD_RE = re.compile(r"-?\d+(?:\.\d+)?")
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")


def load(path: str | os.PathLike, split: str = "test") -> list[Example]:
    """Examples of `split` ("train" / "test" / "test_socratic") from a directory or a .jsonl file."""
    file = resolve_file(path, f"{split}.jsonl")
    examples = []
    for line_number, record in read_jsonl(file):
        where = f"{file}:{line_number}"
        question = field(record, "question", str, where)
        solution = field(record, "answer", str, where)
        if "####" not in solution:
            raise ValueError(f"{where}: field 'answer' has no '####' final answer")
        reasoning, _, gold = solution.rpartition("####")
        gold = gold.strip().replace(",", "")
        if not _GOLD_RE.fullmatch(gold):
            raise ValueError(f"{where}: field 'answer' ends in '#### {gold}', which is not a number")
        examples.append(
            Example(
                prompt=question.strip(),
                answer=gold,
                meta={"id": f"gsm8k/{file.stem}/{len(examples)}", "reasoning": _CALCULATOR_RE.sub("", reasoning).strip()},
            )
        )
    return examples
