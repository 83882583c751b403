"""records.load_records: every file format, field mapping, answer formats, error messages."""
import json

import pytest

from grpo_jax.tasks import gsm8k, math500
from grpo_jax.tasks.common import Example
from grpo_jax.tasks.records import load_records, parse_answer

# GSM8K-shaped records: reasoning with calculator annotations, "#### gold" (one with a comma).
GSM8K_ROWS = [
    {"question": " Tom has 3 apples and buys 4 more. How many now? ", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": "A car costs $1,200 and a bike $300. Total?", "answer": "1,200+300=<<1200+300=1500>>1500\n#### 1,500"},
    {"question": "It was 5 degrees and fell 8. Now?", "answer": "5-8=<<5-8=-3>>-3\n#### -3"},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _key(examples):
    return [(e.prompt, e.answer, e.meta) for e in examples]


def test_jsonl_gsm8k_shaped_equals_gsm8k_load(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    file = _jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM8K_ROWS)
    examples = load_records(file)
    assert examples == gsm8k.load(file)  # same prompt, gold, reasoning and id ("gsm8k/test/i")
    assert [e.answer for e in examples] == ["7", "1500", "-3"]
    assert examples[0] == Example(
        prompt="Tom has 3 apples and buys 4 more. How many now?",
        answer="7",
        meta={"id": "gsm8k/test/0", "reasoning": "3+4=7"},
    )
    assert load_records(tmp_path / "gsm8k", split="test") == examples  # directory + split
    assert [e.meta["id"] for e in load_records(file, id_prefix="mine")] == ["mine/0", "mine/1", "mine/2"]


def test_json_array_object_and_json_lines(tmp_path):
    reference = _key(load_records(_jsonl(tmp_path / "ref.jsonl", GSM8K_ROWS), id_prefix="x"))
    layouts = {
        "array.json": json.dumps(GSM8K_ROWS, indent=2),
        "data.json": json.dumps({"version": 1, "data": GSM8K_ROWS}),
        "rows.json": json.dumps({"rows": GSM8K_ROWS}),
        "by_split.json": json.dumps({"train": GSM8K_ROWS, "test": GSM8K_ROWS[:1]}),  # the split's list
        "lines.json": "".join(json.dumps(row) + "\n" for row in GSM8K_ROWS),  # Dataset.to_json's output
    }
    for name, text in layouts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert _key(load_records(tmp_path / name, id_prefix="x")) == reference, name
    assert len(load_records(tmp_path / "by_split.json", split="test")) == 1
    (tmp_path / "other.json").write_text(json.dumps({"items": GSM8K_ROWS}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.json: expected a JSON array of records, or an object .*'items'"):
        load_records(tmp_path / "other.json")


def test_parquet_file_directory_and_shards(tmp_path):
    reference = _key(load_records(_jsonl(tmp_path / "ref.jsonl", GSM8K_ROWS), id_prefix="x"))
    file = _parquet(tmp_path / "one.parquet", GSM8K_ROWS)
    assert _key(load_records(file, id_prefix="x")) == reference
    folder = tmp_path / "pq"
    (folder / "data").mkdir(parents=True)
    _parquet(folder / "test.parquet", GSM8K_ROWS)
    assert _key(load_records(folder, split="test", id_prefix="x")) == reference
    # The hub layout: data/{split}-0000i-of-0000n.parquet, read in name order.
    _parquet(folder / "data" / "train-00000-of-00002.parquet", GSM8K_ROWS[:2])
    _parquet(folder / "data" / "train-00001-of-00002.parquet", GSM8K_ROWS[2:])
    examples = load_records(folder)  # split="train" by default
    assert _key(load_records(folder, id_prefix="x")) == reference
    assert examples[0].meta["id"] == "pq/train/0"
    bad = _parquet(tmp_path / "bad.parquet", [{"question": "q", "answer": "no final answer ####"}])
    with pytest.raises(ValueError, match=r"bad\.parquet: record 0: field 'answer' ends in '#### ', which is not a number"):
        load_records(bad)


def test_directory_with_split_files(tmp_path):
    _jsonl(tmp_path / "train.jsonl", GSM8K_ROWS[:2])
    (tmp_path / "test.json").write_text(json.dumps(GSM8K_ROWS[2:]), encoding="utf-8")
    (tmp_path / "README.md").write_text("ignored")
    assert [e.answer for e in load_records(tmp_path)] == ["7", "1500"]
    assert [e.answer for e in load_records(tmp_path, split="test")] == ["-3"]
    with pytest.raises(FileNotFoundError, match=r"no file for split 'validation' \(looked for validation\.jsonl"):
        load_records(tmp_path, split="validation")
    _jsonl(tmp_path / "test.jsonl", GSM8K_ROWS)
    with pytest.raises(ValueError, match=r"more than one file for split 'test': test\.jsonl, test\.json"):
        load_records(tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_records(tmp_path / "absent.jsonl")
    (tmp_path / "x.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"x\.csv: unsupported file type '\.csv'"):
        load_records(tmp_path / "x.csv")


def test_field_mapping_and_numeric_answers(tmp_path):
    # SVAMP-style: other field names, answers as JSON numbers.
    rows = [
        {"ID": "a", "Body": "Each pack costs 51 dollars.", "Answer": 51.0},
        {"ID": "b", "Body": "Half of five?", "Answer": 2.5},
        {"ID": "c", "Body": "Seven?", "Answer": 7},
        {"ID": "d", "Body": "Minus one?", "Answer": -1.0},
    ]
    file = tmp_path / "svamp_like.json"
    file.write_text(json.dumps(rows), encoding="utf-8")
    examples = load_records(file, question_key="Body", answer_key="Answer")
    assert [e.answer for e in examples] == ["51", "2.5", "7", "-1"]
    assert examples[0].prompt == "Each pack costs 51 dollars." and examples[0].meta == {"id": f"{tmp_path.name}/svamp_like/0", "reasoning": ""}
    with pytest.raises(ValueError, match=r"svamp_like\.json: record 0: missing field 'question'"):
        load_records(file)  # default keys


def test_answer_formats():
    solution = "We add: $1+1=2$, so the answer is $\\boxed{\\frac{4}{2}}$ or \\boxed{2}."
    gsm = "2*3=<<2*3=6>>6 apples\n#### 6"
    assert parse_answer(" 42 ", "raw") == ("42", "")
    assert parse_answer(3.0, "raw") == ("3", "") and parse_answer(0.1, "raw") == ("0.1", "") and parse_answer(12, "raw") == ("12", "")
    assert parse_answer(gsm, "raw") == (gsm, "")  # raw is verbatim, "####" included
    assert parse_answer(gsm, "gsm8k") == ("6", "2*3=6 apples")
    assert parse_answer("x\n#### 1,234.5", "gsm8k") == ("1234.5", "x")
    assert parse_answer(solution, "boxed") == ("2", solution)  # the LAST \boxed
    assert parse_answer("\\boxed{\\frac{1}{2}}", "boxed")[0] == "\\frac{1}{2}"  # nested braces
    # auto: per value
    assert parse_answer(gsm) == parse_answer(gsm, "gsm8k")
    assert parse_answer(solution) == parse_answer(solution, "boxed")
    assert parse_answer("\\frac{1}{2}") == ("\\frac{1}{2}", "") and parse_answer(51.0) == ("51", "")


def test_mixed_answers_with_auto_and_reasoning_key(tmp_path):
    rows = [
        {"problem": "P1", "answer": "So\n#### 5", "solution": "s1"},
        {"problem": "P2", "answer": "Thus \\boxed{x^2}.", "solution": "s2"},
        {"problem": "P3", "answer": 4.0, "solution": "s3"},
    ]
    file = _jsonl(tmp_path / "mixed.jsonl", rows)
    assert [(e.prompt, e.answer, e.meta["reasoning"]) for e in load_records(file, question_key="problem")] == [
        ("P1", "5", "So"), ("P2", "x^2", "Thus \\boxed{x^2}."), ("P3", "4", ""),
    ]
    with_solution = load_records(file, question_key="problem", reasoning_key="solution")
    assert [e.meta["reasoning"] for e in with_solution] == ["s1", "s2", "s3"]
    boxed = _jsonl(tmp_path / "boxed.jsonl", rows[1:])
    with pytest.raises(ValueError, match=r"boxed\.jsonl:2: field 'answer' has type float, expected str \(answer_format='boxed'\)"):
        load_records(boxed, question_key="problem", answer_format="boxed")
    with pytest.raises(ValueError, match=r"mixed\.jsonl:2: field 'answer' has no '####' final answer"):
        load_records(file, question_key="problem", answer_format="gsm8k")
    with pytest.raises(ValueError, match="answer_format must be one of"):
        load_records(file, answer_format="latex")


@pytest.mark.parametrize(
    "record, answer_format, message",
    [
        ({"answer": "#### 1"}, "auto", r"bad\.jsonl:2: missing field 'question'"),
        ({"question": "q"}, "auto", r"bad\.jsonl:2: missing field 'answer'"),
        ({"question": 3, "answer": "#### 1"}, "auto", r"bad\.jsonl:2: field 'question' has type int"),
        ({"question": "q", "answer": None}, "auto", r"bad\.jsonl:2: field 'answer' has type NoneType, expected str, int or float"),
        ({"question": "q", "answer": True}, "raw", r"bad\.jsonl:2: field 'answer' has type bool"),
        ({"question": "q", "answer": "#### seven"}, "auto", r"bad\.jsonl:2: field 'answer' ends in '#### seven', which is not a number"),
        ({"question": "q", "answer": "\\boxed{1"}, "auto", r"bad\.jsonl:2: field 'answer' has no complete \\boxed\{\.\.\.\} answer"),
        ({"question": "q", "answer": "no box"}, "boxed", r"bad\.jsonl:2: field 'answer' has no complete \\boxed"),
        ({"question": "q", "answer": float("nan")}, "raw", r"bad\.jsonl:2: field 'answer' is nan, not a finite number"),
    ],
)
def test_errors_name_file_record_and_field(tmp_path, record, answer_format, message):
    good = {"question": "q", "answer": "\\boxed{1}\n#### 1"}  # valid under every answer_format
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_records(file, answer_format=answer_format)


def test_malformed_files_name_the_place(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "q", "answer": "1"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.jsonl:2: invalid JSON"):
        load_records(tmp_path / "a.jsonl")
    (tmp_path / "b.json").write_text('[{"question": "q", "answer": "1"}, ["not", "an object"]]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"b\.json: record 1: expected an object \(mapping\), got list"):
        load_records(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('[{"question": "q",\n "answer": 1,}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.json:2: invalid JSON"):
        load_records(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps([{"question": "q", "answer": 1}, {"question": "q", "answer": "#### x"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.json: record 1: field 'answer' ends in '#### x'"):
        load_records(tmp_path / "d.json")
    (tmp_path / "e.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"e\.parquet: cannot read as parquet"):
        load_records(tmp_path / "e.parquet")


def test_hugging_face_save_to_disk_needs_datasets(tmp_path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("`datasets` is installed: the missing-package message cannot show")
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(ImportError, match=r"Hugging Face `datasets` directory .* pip install datasets"):
        load_records(tmp_path)


def test_hugging_face_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {key: [row[key] for row in GSM8K_ROWS] for key in ("question", "answer")}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    reference = _key(load_records(_jsonl(tmp_path / "ref.jsonl", GSM8K_ROWS), id_prefix="x"))
    assert _key(load_records(tmp_path / "dd", split="test", id_prefix="x")) == reference
    assert load_records(tmp_path / "dd", split="test")[0].meta["id"] == "dd/test/0"
    with pytest.raises(ValueError, match=r"no split 'train' \(has test\)"):
        load_records(tmp_path / "dd")
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))  # a single Dataset: split unused
    assert _key(load_records(tmp_path / "one", id_prefix="x")) == reference


def test_real_gsm8k_and_math500_match_their_readers(shared_data):
    file = shared_data / "gsm8k" / "test.jsonl"
    examples = load_records(file)
    assert len(examples) == 1319
    assert examples == gsm8k.load(file)  # prompts, golds, reasoning and ids
    assert load_records(shared_data / "gsm8k", split="test") == examples
    math = load_records(shared_data / "math500" / "test.jsonl", question_key="problem", reasoning_key="solution")
    reference = math500.load(shared_data / "math500")
    assert [(e.prompt, e.answer, e.meta["reasoning"]) for e in math] == [(e.prompt, e.answer, e.meta["reasoning"]) for e in reference]
