"""GSM8K (Cobbe et al. 2021) from the original JSONL files ({"question", "answer"} per line).

Gold = the text after the last "####" of the answer, stripped, commas (thousands separators)
removed; it must be a plain number, else the record is reported as malformed. meta["reasoning"] is
the solution before "####" with the calculator annotations `<<48/2=24>>` removed (an SFT target).

The answer rule is `records.parse_answer(..., "gsm8k")`, shared with the generic record reader and
the TFDS source (`grpo_jax.tasks.tfds`: the same files prepared offline as a TFDS dataset).

The Hub's copy (`openai/gsm8k`, through `grpo_jax.hub`) holds the same records as parquet shards
`main/{split}-00000-of-00001.parquet` (and the Socratic variant under `socratic/`): a directory
without `{split}.jsonl` is read from its `{split}-*.parquet` shards (or `{split}.parquet`), there or
under `main/`, giving the same Examples, ids included.
"""
from __future__ import annotations

import os
import pathlib

from grpo_jax.tasks.records import iter_records, locate, parse_answer
from grpo_jax.tasks.common import Example, field, read_jsonl, resolve_file


def _rows(path: pathlib.Path, split: str) -> tuple[list[tuple[str, dict]], str]:
    """((where, record) rows, file stem for ids): `{split}.jsonl` (or the .jsonl file itself), else
    the Hub layout's parquet for `split`, in `path` or in `path/main`."""
    if path.is_dir() and not (path / f"{split}.jsonl").is_file():
        for folder in (path, path / "main"):  # openai/gsm8k keeps its "main" config in main/
            try:
                source, _ = locate(folder, split=split)
            except FileNotFoundError:
                continue
            return list(iter_records(source, split=split)), split
    file = resolve_file(path, f"{split}.jsonl")
    return [(f"{file}:{line_number}", record) for line_number, record in read_jsonl(file)], file.stem


def load(path: str | os.PathLike, split: str = "test") -> list[Example]:
    """Examples of `split` ("train" / "test" / "test_socratic") from a directory (JSONL files, or the
    Hub's parquet shards: module docstring) or a .jsonl file."""
    rows, stem = _rows(pathlib.Path(path), split)
    examples = []
    for where, record in rows:
        question = field(record, "question", str, where)
        solution = field(record, "answer", str, where)
        gold, reasoning = parse_answer(solution, "gsm8k", where=where, key="answer")
        examples.append(
            Example(
                prompt=question.strip(),
                answer=gold,
                meta={"id": f"gsm8k/{stem}/{len(examples)}", "reasoning": reasoning},
            )
        )
    return examples
