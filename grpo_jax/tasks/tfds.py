"""GSM8K (or any question/answer records) through tensorflow-datasets: offline, without TensorFlow.

TFDS's own `gsm8k` builder downloads from GitHub, and TFDS's default tfrecord format and
`as_dataset` need TensorFlow. This module instead

- defines `GrpoJaxGsm8k` (registered as "grpo_jax_gsm8k", version 1.0.0, features
  {"question": Text, "answer": Text}, written as array_record, file order kept), whose splits are
  the `{split}.jsonl` / `.json` / `.parquet` files of a local folder (the builder's manual dir),
  read with `records.iter_records`; the answer text is stored verbatim (a numeric answer as its
  normalised string, 51.0 -> "51"), so the answer format is decided when reading;
- `prepare(source_dir, data_dir)` runs `download_and_prepare` over that folder: afterwards
  `data_dir/grpo_jax_gsm8k/1.0.0/` holds `grpo_jax_gsm8k-{split}.array_record-*` shards;
- `load(name, split=..., data_dir=...)` reads any prepared array_record dataset through
  `tfds.data_source` (random access; tensorflow-datasets + array_record, no TensorFlow, no grain)
  and turns its records into `Example`s with `records.to_example`, the same answer-format logic as
  `records.load_records`, so `load(NAME, split="test", data_dir=d)` after
  `prepare(".../gsm8k", d)` equals `gsm8k.load(".../gsm8k", "test")`.

Packages: tensorflow-datasets and array_record (its dependency on Linux) read and write; preparing
also needs `importlib_resources`, which TFDS 4.9.10 imports unconditionally while declaring it only
for Python < 3.9 (tensorflow/datasets#11212). Neither TensorFlow nor grain is used.

One data_dir holds one prepared source per builder name: prepare different datasets into
different data_dirs. Preparing again into the same data_dir reuses what is there unless
`overwrite=True`. Importing this module registers the builder with TFDS (that is how TFDS finds
builders by name); `load` needs it only for this builder's name, and any other prepared
array_record dataset is read from its files alone.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import tensorflow_datasets as tfds

from grpo_jax.tasks import records
from grpo_jax.tasks.common import Example, field

NAME = "grpo_jax_gsm8k"


class GrpoJaxGsm8k(tfds.core.GeneratorBasedBuilder):
    """Question/answer records from local files, one split per `{split}.jsonl|.json|.parquet`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "question/answer text from local files, array_record, file order."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put one file per split in the manual dir: {split}.jsonl (GSM8K's train.jsonl / "
        "test.jsonl), {split}.json or {split}.parquet, each record with a question and an answer."
    )

    def __init__(
        self, *, question_key: str = "question", answer_key: str = "answer", file_format: Any = "array_record", **kwargs
    ):
        # The source field names matter only while preparing; reading needs just the features.
        self.question_key, self.answer_key = question_key, answer_key
        super().__init__(file_format=file_format, **kwargs)
        # Pickling rebuilds the builder from _original_state: keep the source keys there too.
        self._original_state.update(question_key=question_key, answer_key=answer_key, file_format=file_format)

    def _info(self) -> tfds.core.DatasetInfo:
        # tfds.core.DatasetInfo directly, not dataset_info_from_configs: the latter reads
        # README/CITATIONS files from this module's package folder, which has none.
        return tfds.core.DatasetInfo(
            builder=self,
            description="Question/answer records (GSM8K-shaped) read from local files.",
            features=tfds.features.FeaturesDict({"question": tfds.features.Text(), "answer": tfds.features.Text()}),
            disable_shuffling=True,  # keep file order: record i of a split is line i of its file
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        folder = pathlib.Path(dl_manager.manual_dir)
        files: dict[str, pathlib.Path] = {}
        for file in sorted(folder.iterdir()):
            if not file.is_file() or file.suffix.lower() not in records.EXTENSIONS:
                continue
            if file.stem in files:
                raise ValueError(f"{folder}: two files for split {file.stem!r}: {files[file.stem].name}, {file.name}")
            files[file.stem] = file
        if not files:
            raise FileNotFoundError(f"{folder}: no {'/'.join(records.EXTENSIONS)} file (one per split, e.g. test.jsonl)")
        return {split: self._generate_examples(file) for split, file in files.items()}

    def _generate_examples(self, file: pathlib.Path):
        for index, (where, record) in enumerate(records.iter_records(file, split=file.stem)):
            question = field(record, self.question_key, str, where)
            answer = field(record, self.answer_key, (str, int, float), where)
            if not isinstance(answer, str):
                answer = records.number_string(answer)  # 51.0 -> "51": what answer_format="raw" gives
            yield index, {"question": question, "answer": answer}


def prepare(
    source_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    question_key: str = "question",
    answer_key: str = "answer",
    overwrite: bool = False,
) -> GrpoJaxGsm8k:
    """Write the TFDS dataset NAME under `data_dir` from the split files in `source_dir` (e.g.
    ../shared/data/gsm8k: train, test and test_socratic). `question_key` / `answer_key` name the
    source fields, stored as the features "question" / "answer". Returns the prepared builder."""
    source_dir = pathlib.Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"{source_dir}: not a directory (expected one holding {{split}}.jsonl files)")
    builder = GrpoJaxGsm8k(data_dir=os.fspath(data_dir), question_key=question_key, answer_key=answer_key)
    modes = tfds.download.GenerateMode
    mode = modes.REUSE_CACHE_IF_EXISTS if overwrite else modes.REUSE_DATASET_IF_EXISTS  # the former rewrites
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(source_dir), download_mode=mode)
    )
    return builder


def load(
    name: str = NAME,
    *,
    split: str,
    data_dir: str | os.PathLike,
    question_key: str = "question",
    answer_key: str = "answer",
    answer_format: str = "auto",
    id_prefix: str | None = None,
) -> list[Example]:
    """Examples of a prepared array_record TFDS dataset (`name` as `tfds.data_source` takes it),
    read without TensorFlow; text features arrive as bytes and are decoded as UTF-8. Answers go
    through `records.parse_answer` (formats: see records.py). Ids are f"{id_prefix}/{index}",
    id_prefix defaulting to f"{name}/{split}". Never downloads or prepares: a dataset not prepared
    in `data_dir` is an error."""
    records.check_answer_format(answer_format)
    try:
        source = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)
    except Exception as error:  # TFDS raises DatasetNotFoundError / ValueError / NotImplementedError
        # The first line only: a not-found error goes on to list every dataset TFDS knows.
        reason = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(
            f"TFDS dataset {name!r} split {split!r} under {data_dir}: cannot open ({type(error).__name__}: {reason})"
        ) from error
    prefix = f"{name}/{split}" if id_prefix is None else id_prefix
    examples = []
    for index in range(len(source)):
        row = source[index]  # text features come back as bytes
        record = {key: value.decode("utf-8") if isinstance(value, bytes) else value for key, value in row.items()}
        examples.append(
            records.to_example(
                record, where=f"{data_dir}: {name}[{split}] record {index}", ident=f"{prefix}/{index}",
                question_key=question_key, answer_key=answer_key, answer_format=answer_format,
            )
        )
    return examples
