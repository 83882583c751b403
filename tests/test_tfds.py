"""tasks.tfds: prepare a local JSONL as a TFDS array_record dataset, read it back without TF."""
import json
import shutil
import sys
import time

import pytest

from grpo_jax.tasks import gsm8k
from grpo_jax.tasks import tfds as tfds_task

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many now?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {"question": " A car costs $1,200 and a bike $300. Total? ", "answer": "1,200+300=<<1200+300=1500>>1500\n#### 1,500"},
    {"question": "It was 5 degrees and fell 8. Now?", "answer": "5-8=<<5-8=-3>>-3\n#### -3"},
    {"question": "Half of 5?", "answer": "5/2=<<5/2=2.5>>2.5\n#### 2.5"},
]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _same(examples, reference):
    return [(e.prompt, e.answer, e.meta["reasoning"]) for e in examples] == [
        (e.prompt, e.answer, e.meta["reasoning"]) for e in reference
    ]


def test_prepare_then_load_equals_gsm8k_reader(tmp_path):
    source = tmp_path / "source"
    _jsonl(source / "test.jsonl", GSM8K_ROWS)
    _jsonl(source / "train.jsonl", GSM8K_ROWS[:2])
    (source / "SOURCE.md").write_text("not a split")
    builder = tfds_task.prepare(source, tmp_path / "tfds")
    assert builder.name == tfds_task.NAME == "grpo_jax_gsm8k" and str(builder.version) == "1.0.0"
    assert sorted(builder.info.splits) == ["test", "train"]
    assert builder.info.splits["test"].num_examples == 4
    assert list((tmp_path / "tfds" / "grpo_jax_gsm8k" / "1.0.0").glob("grpo_jax_gsm8k-test.array_record-*"))

    examples = tfds_task.load(split="test", data_dir=tmp_path / "tfds")
    assert _same(examples, gsm8k.load(source, "test"))  # same order, prompts, golds, reasoning
    assert [e.answer for e in examples] == ["7", "1500", "-3", "2.5"]
    assert examples[1].prompt == "A car costs $1,200 and a bike $300. Total?"
    assert [e.meta["id"] for e in examples[:2]] == ["grpo_jax_gsm8k/test/0", "grpo_jax_gsm8k/test/1"]
    assert _same(tfds_task.load(split="train", data_dir=tmp_path / "tfds"), gsm8k.load(source, "train"))
    # TFDS split slicing and an explicit version pass through to tfds.data_source.
    assert _same(tfds_task.load("grpo_jax_gsm8k:1.0.0", split="test[1:3]", data_dir=tmp_path / "tfds"), examples[1:3])
    raw = tfds_task.load(split="test", data_dir=tmp_path / "tfds", answer_format="raw", id_prefix="g")
    assert raw[0].answer == GSM8K_ROWS[0]["answer"] and raw[0].meta["id"] == "g/0"
    assert "tensorflow" not in sys.modules  # read and written without TensorFlow


def test_other_fields_formats_and_numeric_answers(tmp_path):
    # SVAMP-shaped JSON array with numeric answers, and a MATH-shaped parquet with \boxed answers.
    source = tmp_path / "source"
    source.mkdir()
    (source / "train.json").write_text(json.dumps([{"Body": "b1", "Answer": 51.0}, {"Body": "b2", "Answer": 2.5}]))
    tfds_task.prepare(source, tmp_path / "svamp", question_key="Body", answer_key="Answer")
    assert [(e.prompt, e.answer) for e in tfds_task.load(split="train", data_dir=tmp_path / "svamp")] == [("b1", "51"), ("b2", "2.5")]

    import pyarrow as pa
    import pyarrow.parquet as pq

    math = tmp_path / "math"
    math.mkdir()
    pq.write_table(pa.Table.from_pylist([{"question": "1/2?", "answer": "It is \\boxed{\\frac{1}{2}}."}]), math / "test.parquet")
    tfds_task.prepare(math, tmp_path / "math_tfds")
    (example,) = tfds_task.load(split="test", data_dir=tmp_path / "math_tfds")
    assert example.answer == "\\frac{1}{2}" and example.meta["reasoning"] == "It is \\boxed{\\frac{1}{2}}."
    with pytest.raises(ValueError, match=r"math_tfds: grpo_jax_gsm8k\[test\] record 0: field 'answer' has no '####'"):
        tfds_task.load(split="test", data_dir=tmp_path / "math_tfds", answer_format="gsm8k")
    with pytest.raises(ValueError, match=r"record 0: missing field 'problem'"):
        tfds_task.load(split="test", data_dir=tmp_path / "math_tfds", question_key="problem")


def test_prepare_reuses_unless_overwrite(tmp_path):
    source = _jsonl(tmp_path / "source" / "test.jsonl", GSM8K_ROWS[:1]).parent
    tfds_task.prepare(source, tmp_path / "tfds")
    _jsonl(source / "test.jsonl", GSM8K_ROWS)
    tfds_task.prepare(source, tmp_path / "tfds")  # already prepared: reused as it is
    assert len(tfds_task.load(split="test", data_dir=tmp_path / "tfds")) == 1
    tfds_task.prepare(source, tmp_path / "tfds", overwrite=True)
    assert len(tfds_task.load(split="test", data_dir=tmp_path / "tfds")) == 4


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        tfds_task.prepare(tmp_path / "absent", tmp_path / "tfds")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no split files here")
    with pytest.raises(FileNotFoundError, match=r"empty: no \.jsonl/\.json/\.parquet file"):
        tfds_task.prepare(tmp_path / "empty", tmp_path / "tfds")
    bad = _jsonl(tmp_path / "bad" / "test.jsonl", [GSM8K_ROWS[0], {"question": "q"}]).parent
    with pytest.raises(ValueError, match=r"bad/test\.jsonl:2: missing field 'answer'"):
        tfds_task.prepare(bad, tmp_path / "tfds_bad")
    with pytest.raises(ValueError, match=r"TFDS dataset 'grpo_jax_gsm8k' split 'test' under .*: cannot open"):
        tfds_task.load(split="test", data_dir=tmp_path / "nothing_prepared")
    good = _jsonl(tmp_path / "good" / "test.jsonl", GSM8K_ROWS).parent
    tfds_task.prepare(good, tmp_path / "tfds")
    with pytest.raises(ValueError, match=r"split 'train' .*Unknown split 'train'"):
        tfds_task.load(split="train", data_dir=tmp_path / "tfds")
    with pytest.raises(ValueError, match="answer_format must be one of"):
        tfds_task.load(split="test", data_dir=tmp_path / "tfds", answer_format="latex")


def test_real_gsm8k_test_split(shared_data, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(shared_data / "gsm8k" / "test.jsonl", source / "test.jsonl")
    start = time.perf_counter()
    tfds_task.prepare(source, tmp_path / "tfds")
    prepared = time.perf_counter()
    examples = tfds_task.load(split="test", data_dir=tmp_path / "tfds")
    loaded = time.perf_counter()
    reference = gsm8k.load(shared_data / "gsm8k", "test")
    assert len(examples) == len(reference) == 1319
    assert _same(examples, reference)
    print(f"TFDS GSM8K test (1319): prepare {prepared - start:.2f} s, load {loaded - prepared:.2f} s")
