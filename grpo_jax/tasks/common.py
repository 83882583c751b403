"""Datasets and synthetic task generators.

Every task yields `Example(prompt, answer, meta)`: `prompt` is the bare problem text (formatting
happens in `tasks.prompts`), `answer` the gold string a verifier compares against (for countdown a
reference expression; the verifier reads `meta`), and `meta` task-specific extras (ids, a reasoning
string for SFT targets, countdown numbers and target).

- `gsm8k.load`, `math500.load` / `math500.load_train`, `svamp.load`: readers over local files
  (../shared/data in this team's layout; never fetched at run time).
- `arithmetic.example`, `countdown.example`: pure functions of (seed, index), so data order is
  reproducible and resumable without iterating.

This module holds only `Example` and the small helpers the readers and generators share.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, NamedTuple


class Example(NamedTuple):
    prompt: str  # the bare problem text
    answer: str  # gold answer (normalised string); countdown: one reference expression
    meta: dict  # task extras: "id", "reasoning" (for SFT targets), countdown "numbers" / "target"


def resolve_file(path: str | os.PathLike, filename: str) -> pathlib.Path:
    """`path` itself if it is a file, else `path / filename`; FileNotFoundError naming both."""
    path = pathlib.Path(path)
    file = path if path.is_file() else path / filename
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (looked for {filename!r} under {path})")
    return file


def read_jsonl(file: pathlib.Path) -> list[tuple[int, dict]]:
    """(1-based line number, record) for every non-blank line; ValueError naming file and line."""
    rows = []
    with open(file, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file}:{line_number}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{file}:{line_number}: expected a JSON object, got {type(record).__name__}")
            rows.append((line_number, record))
    return rows


def field(record: dict, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[name], checked to be of `kind`; ValueError naming `where` (file:line) and the field."""
    if name not in record:
        raise ValueError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}: field {name!r} has type {type(value).__name__}, expected {kind}")
    return value


def stable_ints(key: tuple, count: int) -> list[int]:
    """`count` uniform 64-bit ints from a hash of `key`: identical on every machine and version.

    Used instead of numpy / `random`, whose streams are not promised to stay the same across
    versions, so (seed, index) -> example is fixed forever.
    """
    out: list[int] = []
    block = 0
    while len(out) < count:
        digest = hashlib.blake2b(repr((key, block)).encode(), digest_size=64).digest()
        out.extend(int.from_bytes(digest[i : i + 8], "little") for i in range(0, 64, 8))
        block += 1
    return out[:count]


def in_eval_split(key: tuple, *, eval_fraction_inverse: int = 10) -> bool:
    """Whether a problem (identified by `key`, seed-independent) belongs to the held-out split.

    The split is a function of the problem alone, so train and eval are disjoint for any seeds.
    """
    return stable_ints(("split",) + key, 1)[0] % eval_fraction_inverse == 0
