"""SVAMP (Patel et al. 2021) from SVAMP.json: a JSON array of {"ID", "Body", "Question",
"Equation", "Answer" (float), "Type"}.

prompt = Body + " " + Question (as in SOURCE.md; some Bodies lack a final period, kept verbatim).
Gold = the numeric Answer as a normalised string: 51.0 -> "51", 2.5 -> "2.5". No TFDS builder.
"""
from __future__ import annotations

import json
import os

from grpo_jax.tasks.common import Example, field, resolve_file


def _number_string(value: float) -> str:
    """Shortest exact decimal for a JSON number: integral floats lose their ".0"."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def load(path: str | os.PathLike) -> list[Example]:
    """All 1000 SVAMP problems from a directory holding SVAMP.json or from the file itself."""
    file = resolve_file(path, "SVAMP.json")
    try:
        with open(file, encoding="utf-8") as f:
            items = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(items, list):
        raise ValueError(f"{file}: expected a JSON array, got {type(items).__name__}")
    examples = []
    for number, item in enumerate(items):
        # A JSON array has no per-record line numbers after parsing: name the item index instead.
        where = f"{file}: item {number}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
        body = field(item, "Body", str, where).strip()
        question = field(item, "Question", str, where).strip()
        answer = field(item, "Answer", (int, float), where)
        examples.append(
            Example(
                prompt=f"{body} {question}",
                answer=_number_string(answer),
                meta={"id": item.get("ID", f"svamp/{number}"), "equation": item.get("Equation"), "type": item.get("Type")},
            )
        )
    return examples
