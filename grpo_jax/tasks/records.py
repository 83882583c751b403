"""A generic reader for math-style datasets: any file of question/answer records -> `Example`s.

`load_records(path, split=..., question_key=..., answer_key=..., answer_format=...)` reads

- a `.jsonl` file: one JSON object per line (blank lines skipped); errors name `file:line`.
- a `.json` file: a JSON array of objects, or an object holding that array under the key
  `split` (e.g. {"train": [...], "test": [...]}) or under "data", "rows", "examples" or
  "records" (looked up in that order). A `.json` file that is really JSON Lines (what
  `datasets.Dataset.to_json` writes) is read as JSONL. Errors name `file: record i` (0-based).
- a `.parquet` file (pyarrow, imported only then); errors name `file: record i`.
- a directory holding exactly one of `{split}.jsonl`, `{split}.json`, `{split}.parquet`, or
  parquet shards `{split}-*.parquet` (the Hugging Face hub layout, also under `data/`).
- a Hugging Face `datasets` directory written by `save_to_disk` (recognised by
  `dataset_dict.json`, or `dataset_info.json` + `state.json`): read with
  `datasets.load_from_disk`, so `datasets` must be installed (it is not a dependency). For a
  DatasetDict `split` picks the split; a single saved Dataset is read whole.

Answer formats (`answer_format`), giving the gold string `Example.answer`:
- "raw": the value as given: a string stripped, a number normalised (51.0 -> "51", 2.5 -> "2.5").
- "gsm8k": a string; the text after its last "####", commas removed, which must be a number.
  meta["reasoning"] = the text before "####" without GSM8K's calculator annotations `<<4*2=8>>`.
- "boxed": a string; the content of its last `\\boxed{...}`. meta["reasoning"] = the whole text.
- "auto": per record, "gsm8k" for a string containing "####", else "boxed" for one containing
  "\\boxed{", else "raw".

prompt = the question stripped; meta = {"id": f"{id_prefix}/{index}", "reasoning": ...} ("" for
a raw answer unless `reasoning_key` names a field holding the solution). The default `id_prefix` is
"<parent directory>/<file stem>" ("gsm8k/test" for gsm8k/test.jsonl), so GSM8K read here gets the
ids `gsm8k.load` gives.

`iter_records` and `to_example` are the two halves, shared with `grpo_jax.tasks.tfds`.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
from typing import Any, Iterator

from grpo_jax.tasks.common import Example, field, read_jsonl
from grpo_jax.tasks.math500 import last_boxed

ANSWER_FORMATS = ("auto", "raw", "gsm8k", "boxed")
EXTENSIONS = (".jsonl", ".json", ".parquet")
JSON_LIST_KEYS = ("data", "rows", "examples", "records")  # after the split name itself
_HF_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")

_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")  # what GSM8K's "#### ..." must be (as gsm8k.load)
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>


def load_records(
    path: str | os.PathLike,
    *,
    split: str = "train",
    question_key: str = "question",
    answer_key: str = "answer",
    answer_format: str = "auto",
    id_prefix: str | None = None,
    reasoning_key: str | None = None,
) -> list[Example]:
    """Examples from a file or directory of question/answer records (formats: module docstring).

    `split` picks the file inside a directory (ignored for a file path); `question_key` /
    `answer_key` name the fields (e.g. "Body" / "Answer"); `reasoning_key`, when given, names a
    field (a string) used as meta["reasoning"] instead of the one derived from the answer.
    ValueError / FileNotFoundError name the file, the record and the field.
    """
    check_answer_format(answer_format)
    source, default_prefix = locate(path, split=split)
    prefix = default_prefix if id_prefix is None else id_prefix
    return [
        to_example(
            record, where=where, ident=f"{prefix}/{index}", question_key=question_key,
            answer_key=answer_key, answer_format=answer_format, reasoning_key=reasoning_key,
        )
        for index, (where, record) in enumerate(iter_records(source, split=split))
    ]


def locate(path: str | os.PathLike, *, split: str) -> tuple[pathlib.Path, str]:
    """(what to read, default id prefix): a file, a HF `save_to_disk` directory, or a directory
    with one `{split}` file (or parquet shards, returned as the directory itself)."""
    path = pathlib.Path(path)
    if path.is_file():
        return path, f"{path.parent.name}/{path.stem}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if _is_hf_dir(path):
        return path, f"{path.name}/{split}"
    found = [path / f"{split}{ext}" for ext in EXTENSIONS if (path / f"{split}{ext}").is_file()]
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ValueError(f"{path}: more than one file for split {split!r}: {names}; pass the file itself")
    if found:
        return found[0], f"{path.name}/{split}"
    if _shards(path, split):
        return path, f"{path.name}/{split}"
    wanted = ", ".join(f"{split}{ext}" for ext in EXTENSIONS)
    raise FileNotFoundError(
        f"{path}: no file for split {split!r} (looked for {wanted}, {split}-*.parquet shards, "
        "or a Hugging Face save_to_disk directory)"
    )


def iter_records(source: str | os.PathLike, *, split: str = "train") -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of a file or directory `locate` returned. `where` is
    "file:line" for JSONL and "file: record i" otherwise, for error messages."""
    source = pathlib.Path(source)
    if source.is_dir():
        if _is_hf_dir(source):
            yield from _hf_records(source, split)
        else:
            for shard in _shards(source, split):
                yield from _parquet_records(shard)
        return
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        for line_number, record in read_jsonl(source):
            yield f"{source}:{line_number}", record
    elif suffix == ".json":
        yield from _json_records(source, split)
    elif suffix == ".parquet":
        yield from _parquet_records(source)
    else:
        raise ValueError(f"{source}: unsupported file type {source.suffix!r} (expected one of {', '.join(EXTENSIONS)})")


def to_example(
    record: dict,
    *,
    where: str,
    ident: str,
    question_key: str = "question",
    answer_key: str = "answer",
    answer_format: str = "auto",
    reasoning_key: str | None = None,
) -> Example:
    """One record -> Example; errors name `where` and the field."""
    question = field(record, question_key, str, where)
    if answer_key not in record:
        raise ValueError(f"{where}: missing field {answer_key!r}")
    gold, reasoning = parse_answer(record[answer_key], answer_format, where=where, key=answer_key)
    if reasoning_key is not None:
        reasoning = field(record, reasoning_key, str, where)
    return Example(prompt=question.strip(), answer=gold, meta={"id": ident, "reasoning": reasoning})


def parse_answer(value: Any, answer_format: str = "auto", *, where: str = "", key: str = "answer") -> tuple[str, str]:
    """(gold, reasoning) from an answer field's value under `answer_format` (module docstring)."""
    check_answer_format(answer_format)
    if answer_format == "auto":
        if isinstance(value, str) and "####" in value:
            answer_format = "gsm8k"
        elif isinstance(value, str) and "\\boxed{" in value:
            answer_format = "boxed"
        else:
            answer_format = "raw"
    kind = (str, int, float) if answer_format == "raw" else str
    if not isinstance(value, kind) or isinstance(value, bool):
        names = "str, int or float" if answer_format == "raw" else "str"
        raise ValueError(
            f"{where}: field {key!r} has type {type(value).__name__}, expected {names} (answer_format={answer_format!r})"
        )
    if answer_format == "raw":
        if isinstance(value, str):
            return value.strip(), ""
        if not math.isfinite(value):
            raise ValueError(f"{where}: field {key!r} is {value!r}, not a finite number")
        return number_string(value), ""
    if answer_format == "gsm8k":
        if "####" not in value:
            raise ValueError(f"{where}: field {key!r} has no '####' final answer (answer_format='gsm8k')")
        reasoning, _, gold = value.rpartition("####")
        gold = gold.strip().replace(",", "")
        if not _NUMBER_RE.fullmatch(gold):
            raise ValueError(f"{where}: field {key!r} ends in '#### {gold}', which is not a number")
        return gold, _CALCULATOR_RE.sub("", reasoning).strip()
    gold = last_boxed(value)
    if gold is None:
        raise ValueError(f"{where}: field {key!r} has no complete \\boxed{{...}} answer (answer_format='boxed')")
    return gold.strip(), value


def number_string(value: int | float) -> str:
    """Shortest exact decimal for a number: integral floats lose their ".0" (as svamp.load)."""
    if isinstance(value, int):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


# --------------------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------------------
def check_answer_format(answer_format: str) -> None:
    """ValueError unless `answer_format` is one of ANSWER_FORMATS."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")


def _is_hf_dir(path: pathlib.Path) -> bool:
    """A `datasets` save_to_disk directory: a DatasetDict, or one Dataset."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def _shards(path: pathlib.Path, split: str) -> list[pathlib.Path]:
    """`{split}-*.parquet` in `path`, else in `path/data` (the hub layout), in name order."""
    for folder in (path, path / "data"):
        shards = sorted(folder.glob(f"{split}-*.parquet"))
        if shards:
            return shards
    return []


def _json_records(file: pathlib.Path, split: str) -> Iterator[tuple[str, dict]]:
    text = file.read_text(encoding="utf-8")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several JSON values: JSON Lines under a .json name
            for line_number, record in read_jsonl(file):
                yield f"{file}:{line_number}", record
            return
        raise ValueError(f"{file}:{error.lineno}: invalid JSON ({error.msg})") from None
    if isinstance(items, dict):
        key = next((k for k in (split, *JSON_LIST_KEYS) if isinstance(items.get(k), list)), None)
        if key is None:
            raise ValueError(
                f"{file}: expected a JSON array of records, or an object with the list under "
                f"{(split, *JSON_LIST_KEYS)}; got an object with keys {sorted(items)[:10]}"
            )
        items = items[key]
    if not isinstance(items, list):
        raise ValueError(f"{file}: expected a JSON array of records, got {type(items).__name__}")
    yield from _checked(file, items)


def _checked(name: object, items: Any) -> Iterator[tuple[str, dict]]:
    # Parsed JSON / columnar rows carry no line numbers: name the 0-based record index.
    for index, item in enumerate(items):
        where = f"{name}: record {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object (mapping), got {type(item).__name__}")
        yield where, item


def _parquet_records(file: pathlib.Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq  # only when a parquet file is read

    try:
        table = pq.read_table(file)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError subclasses
        raise ValueError(f"{file}: cannot read as parquet ({error})") from None
    yield from _checked(file, table.to_pylist())


def _hf_records(path: pathlib.Path, split: str) -> Iterator[tuple[str, dict]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{path} is a Hugging Face `datasets` directory (written by save_to_disk); reading it "
            "needs the `datasets` package: pip install datasets"
        ) from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r} (has {', '.join(sorted(loaded))})")
        loaded, path = loaded[split], path / split
    yield from _checked(path, loaded)
