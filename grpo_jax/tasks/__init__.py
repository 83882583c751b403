"""Tasks by name: the built-ins in one dict, users' own as "package.module:function".

A task is everything the trainer needs to know about a problem set (`Task`): a pure function from
an index to a training `Example` (so data order is reproducible and resumable), the held-out eval
and validation problems, how to write a prompt and how to check an answer. `from_config` builds the
one named by `task.name`:

    BUILTIN_TASKS   arithmetic, countdown (generated: pure functions of (seed, index)),
                    gsm8k, math500, svamp (the public data sets, read from local files or TFDS),
                    records (any math-style JSONL / JSON / parquet / HF `datasets` directory, with
                    task.question_key / task.answer_key / task.answer_format)
    "pkg.mod:fn"    your own: fn(config) -> Task, usually `records_task(config, train, held_out)`

Dataset tasks train on problems disjoint from the held-out ones by normalised problem text
(`records_task` drops any training problem whose text is held out), and `fit_prompts` drops, once
at load, problems whose prompt is longer than `sampling.max_prompt_length` tokens.

`Example`, the readers' shared helpers and the per-dataset readers live in the submodules
(`tasks.common`, `tasks.gsm8k`, ...); this module only wires them.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable, NamedTuple

import numpy as np

from grpo_jax import ConfigError, import_path
from grpo_jax import rewards as rewards_lib
from grpo_jax import tokenizer as tok_lib
from grpo_jax.tasks import arithmetic, countdown, gsm8k, math500, prompts, records, svamp
from grpo_jax.tasks.common import (  # noqa: F401  (re-exported: the package's public names)
    Example, field, in_eval_split, read_jsonl, resolve_file, stable_ints)

SOURCES = ("files", "tfds")


class Task(NamedTuple):
    style: str  # answer style of prompts and verifiers (tasks.prompts.STYLES)
    train_example: Callable[[int], Example]  # index -> Example, a pure function
    eval_examples: list  # the reported held-out set
    validation_examples: list  # held out too, disjoint from eval_examples: for SFT early stopping
    prompt: Callable[[Example], str]  # the prompt text (before any chat template)
    correct: Callable[[str, Example], float]  # the correctness verifier
    train_records: list | None = None  # a dataset's training problems (None: a generated task)
    seed: int = 0


def normalized_problem(text: str) -> str:
    """Problem text for identity checks: case and whitespace folded."""
    return " ".join(text.lower().split())


def dataset_order(records: list, seed: int) -> Callable[[int], Any]:
    """index -> record: a fresh permutation per epoch, a pure function of (seed, index)."""
    def get(index):
        epoch, i = divmod(index, len(records))
        return records[np.random.default_rng([seed, epoch]).permutation(len(records))[i]]
    return get


def _prompt_fn(config) -> Callable[[Example], str]:
    style = config.task.prompt_style
    if config.task.instruction:
        return lambda e: prompts.format_prompt(e.prompt, style=style)
    return lambda e: e.prompt


def _answer_match(config) -> Callable[[str, Example], float]:
    style = config.task.prompt_style
    return lambda c, e: rewards_lib.correctness(c, e.answer, style=style)


def _held_out_split(config, held_out: list) -> tuple[list, list]:
    # The first eval_size held-out problems are reported; the next validation_size steer SFT.
    size = config.task.eval_size or len(held_out)
    return held_out[:size], held_out[size: size + config.sft.validation_size]


def records_task(config, train: list, held_out: list, *, correct=None) -> Task:
    """A Task over lists of Examples: training problems whose normalised text is also held out are
    dropped; the held-out list is cut into eval (`task.eval_size`) and validation
    (`sft.validation_size`). `correct` defaults to answer matching in `task.prompt_style`."""
    seen = {normalized_problem(e.prompt) for e in held_out}
    train = [e for e in train if normalized_problem(e.prompt) not in seen]
    if not train:
        raise ConfigError(f"config key `task.data_path`: no training problems left for task "
                          f"{config.task.name!r} after removing those held out")
    evals, validation = _held_out_split(config, held_out)
    return Task(config.task.prompt_style, dataset_order(train, config.train.seed), evals, validation,
                _prompt_fn(config), correct or _answer_match(config), train, config.train.seed)


def _generated_task(config, example: Callable, correct=None) -> Task:
    """A task whose problems are a pure function `example(seed, index, split=...)`."""
    t, seed = config.task, config.train.seed
    held_out = [example(seed, i, split="eval") for i in range(t.eval_size + config.sft.validation_size)]
    evals, validation = _held_out_split(config, held_out)
    return Task(t.prompt_style, lambda i: example(seed, i), evals, validation, _prompt_fn(config),
                correct or _answer_match(config), None, seed)


def _data_path(config, key: str = "data_path") -> pathlib.Path:
    value = getattr(config.task, key)
    if not value:
        raise ConfigError(f"config key `task.{key}` must name the dataset's file or directory for "
                          f"task {config.task.name!r}")
    path = pathlib.Path(value)
    if not path.exists():
        raise ConfigError(f"config key `task.{key}`: {value!r} does not exist")
    return path


def _read(config, split: str, reader: Callable) -> list:
    """A split of a public data set, from its files or (task.source="tfds") from TFDS."""
    t = config.task
    if t.source == "tfds":
        from grpo_jax.tasks import tfds as tfds_lib
        return tfds_lib.load(t.tfds_name, split=split, data_dir=str(_data_path(config)),
                             question_key=t.question_key, answer_key=t.answer_key,
                             answer_format=t.answer_format)
    return reader(_data_path(config), split)


def _arithmetic(config) -> Task:
    t = config.task
    example = lambda seed, i, split="train": arithmetic.example(  # noqa: E731
        seed, i, num_digits=t.num_digits, split=split, working=t.working)
    if t.eval_size:
        return _generated_task(config, example)
    # eval_size = 0: the whole held-out split, each problem once, the same for every seed
    if config.sft.steps and config.sft.stop_accuracy:
        raise ConfigError("config key `task.eval_size` = 0 reports on the whole held-out split of task "
                          "'arithmetic', which leaves no validation problems for the SFT early stop "
                          "(sft.stop_accuracy > 0): set task.eval_size > 0 or sft.stop_accuracy = 0")
    try:
        pool = arithmetic.held_out_pool(num_digits=t.num_digits, working=t.working)
    except ValueError as err:
        raise ConfigError(f"config key `task.eval_size` = 0 (the whole held-out split): {err}") from None
    evals, validation = _held_out_split(config, pool)
    return Task(t.prompt_style, lambda i: example(config.train.seed, i), evals, validation, _prompt_fn(config),
                _answer_match(config), None, config.train.seed)


def _countdown(config) -> Task:
    t, style = config.task, config.task.prompt_style
    return _generated_task(
        config, lambda seed, i, split="train": countdown.example(seed, i, num_numbers=t.num_numbers, split=split),
        correct=lambda c, e: rewards_lib.countdown_reward(c, e.meta["numbers"], e.meta["target"], style=style))


def _gsm8k(config) -> Task:
    t = config.task
    return records_task(config, _read(config, t.train_split, gsm8k.load), _read(config, t.eval_split, gsm8k.load))


def _math500(config) -> Task:
    # MATH-500 is an eval set: train on the MATH release's problems not in it (PRM800K's split).
    style = config.task.prompt_style
    held_out = math500.load(_data_path(config), config.task.eval_split)
    train = math500.load_train(_data_path(config, "train_data_path"), _data_path(config))
    return records_task(config, train, held_out,
                        correct=lambda c, e: rewards_lib.math_reward(c, e.answer, style=style))


def _svamp(config) -> Task:
    # One file, split by a hash of each problem's text (seed-independent).
    items = svamp.load(_data_path(config))
    held_out = [e for e in items if in_eval_split(("svamp", e.prompt))]
    return records_task(config, [e for e in items if not in_eval_split(("svamp", e.prompt))], held_out)


def _records(config) -> Task:
    t = config.task

    def read(path, split):
        return records.load_records(path, split=split, question_key=t.question_key,
                                    answer_key=t.answer_key, answer_format=t.answer_format)
    return records_task(config, _read(config, t.train_split, read), _read(config, t.eval_split, read))


BUILTIN_TASKS: dict[str, Callable[[Any], Task]] = {
    "arithmetic": _arithmetic, "countdown": _countdown, "gsm8k": _gsm8k, "math500": _math500,
    "svamp": _svamp, "records": _records,
}


def from_config(config) -> Task:
    """The task named by `task.name` (a built-in or "package.module:function")."""
    name = config.task.name
    build = BUILTIN_TASKS.get(name) or import_path(name, "task.name")
    task = build(config)
    if not isinstance(task, Task):
        raise ConfigError(f"config key `task.name` = {name!r} returned {type(task).__name__}, "
                          f"expected grpo_jax.tasks.Task (build one with grpo_jax.tasks.records_task)")
    return task


def fit_prompts(task: Task, tokenizer, config) -> tuple[Task, dict]:
    """Drops the problems whose prompt (as the sampler will see it: instruction, chat template) is
    longer than `sampling.max_prompt_length` tokens, once, at data load, so that no step can meet
    one mid-run. Returns the task and the counts dropped (`prompts_dropped_train`,
    `prompts_dropped_eval`). A generated task cannot be filtered (its stream is endless): its first
    64 prompts must fit, or it is an error naming the key."""
    limit = config.sampling.max_prompt_length
    chat, system = config.task.chat_template, config.task.system_prompt or None

    def lengths(examples):
        texts = [task.prompt(e) for e in examples]
        return [len(ids) for ids in tok_lib.prompt_ids(tokenizer, texts, chat=chat, system=system)]

    def fits(examples):
        return [e for e, n in zip(examples, lengths(examples)) if n <= limit]

    counts = {"prompts_dropped_train": 0}
    if task.train_records is not None:
        keep = fits(task.train_records)
        counts["prompts_dropped_train"] = len(task.train_records) - len(keep)
        if not keep:
            raise ConfigError(
                f"config key `sampling.max_prompt_length` = {limit} is invalid: all "
                f"{len(task.train_records)} training prompts are longer (the shortest has "
                f"{min(lengths(task.train_records))} tokens)")
        task = task._replace(train_records=keep, train_example=dataset_order(keep, task.seed))
    else:
        longest = max(lengths([task.train_example(i) for i in range(64)]))
        if longest > limit:
            raise ConfigError(f"config key `sampling.max_prompt_length` = {limit} is invalid: the "
                              f"task's prompts have up to {longest} tokens")
    evals, validation = fits(task.eval_examples), fits(task.validation_examples)
    counts["prompts_dropped_eval"] = (len(task.eval_examples) - len(evals)
                                      + len(task.validation_examples) - len(validation))
    if not evals and task.eval_examples:
        raise ConfigError(f"config key `sampling.max_prompt_length` = {limit} is invalid: every eval "
                          f"prompt is longer")
    return task._replace(eval_examples=evals, validation_examples=validation), counts
