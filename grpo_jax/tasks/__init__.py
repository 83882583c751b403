"""Tasks by name: the built-ins in one dict, users' own as "package.module:function".

A task is everything the trainer needs to know about a problem set (`Task`): a pure function from
an index to a training `Example` (so data order is reproducible and resumable), the held-out eval
and validation problems, how to write a prompt and how to check an answer. `from_config` builds the
one named by `task.name`:

    BUILTIN_TASKS   arithmetic, countdown (generated: pure functions of (seed, index)),
                    code (generated function-writing problems judged by hidden tests in
                    grpo_jax.sandbox; rewards code_tests / code_format),
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

from grpo_jax import ConfigError, hub, import_path
from grpo_jax import rewards as rewards_lib
from grpo_jax import tokenizer as tok_lib
from grpo_jax.tasks import arithmetic, code, countdown, gsm8k, math500, prompts, records, svamp
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
    # The format score (completion -> [0, 1]) of eval's eval_format and the "format" reward; None =
    # rewards.format_reward in `style`. The code task's: one fenced code block (tasks.code.code_format).
    format: Callable[[str], float] | None = None


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
    """(eval, validation) from a held-out list of DISTINCT problems: the first `task.eval_size`
    (0, or more than there are: all of them; the metrics' `eval_examples` says how many) are reported,
    the next `sft.validation_size` steer the SFT early stop. Disjoint by construction; too few left
    for an SFT early stop is an error naming the keys."""
    t, sft = config.task, config.sft
    size = min(t.eval_size or len(held_out), len(held_out))
    evals, validation = held_out[:size], held_out[size: size + sft.validation_size]
    if sft.steps and sft.stop_accuracy and len(validation) < sft.validation_size:
        raise ConfigError(
            f"config keys `task.eval_size` = {t.eval_size} and `sft.validation_size` = "
            f"{sft.validation_size}: the SFT early stop (sft.stop_accuracy > 0) needs that many "
            f"validation problems beside the {len(evals)} reported ones, but task {t.name!r} has "
            f"only {len(validation)} left of {len(held_out)} distinct held-out problems")
    return evals, validation


def distinct(examples: list, identity: Callable[[Example], Any] | None = None) -> list:
    """`examples` without repeats (first occurrence kept, order kept); `identity` (default: the
    normalised problem text) says when two examples are the same problem."""
    identity = identity or (lambda e: normalized_problem(e.prompt))
    seen, out = set(), []
    for e in examples:
        key = identity(e)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def records_task(config, train: list, held_out: list, *, correct=None) -> Task:
    """A Task over lists of Examples: training problems whose normalised text is also held out are
    dropped; the held-out list, without repeats, is cut into eval (`task.eval_size`) and validation
    (`sft.validation_size`), disjoint. `correct` defaults to answer matching in `task.prompt_style`."""
    held_out = distinct(held_out)  # a data set may list a problem twice: it would count twice
    seen = {normalized_problem(e.prompt) for e in held_out}
    train = [e for e in train if normalized_problem(e.prompt) not in seen]
    if not train:
        raise ConfigError(f"config key `task.data_path`: no training problems left for task "
                          f"{config.task.name!r} after removing those held out")
    evals, validation = _held_out_split(config, held_out)
    return Task(config.task.prompt_style, dataset_order(train, config.train.seed), evals, validation,
                _prompt_fn(config), correct or _answer_match(config), train, config.train.seed)


# Draws tried per distinct held-out problem wanted before a generated pool counts as exhausted.
_DRAWS_PER_PROBLEM = 20


def _generated_task(config, example: Callable, correct=None, identity=None) -> Task:
    """A task whose problems are a pure function `example(seed, index, split=...)`. The held-out
    problems are drawn WITHOUT replacement (repeats skipped, `identity` says which are the same) from
    the "eval" split with seed 0, so every `train.seed` reports on the same problems (paired
    comparisons across seeds); eval and validation are disjoint, and training never draws from that
    split."""
    t, seed = config.task, config.train.seed
    if not t.eval_size:
        raise ConfigError(f"config key `task.eval_size` = 0 (the whole held-out split) needs a task whose "
                          f"held-out split can be listed; task {t.name!r} generates problems: set "
                          f"task.eval_size > 0")
    wanted = t.eval_size + config.sft.validation_size
    identity = identity or (lambda e: normalized_problem(e.prompt))
    held_out, seen = [], set()
    for index in range(_DRAWS_PER_PROBLEM * wanted):
        if len(held_out) == wanted:
            break
        e = example(0, index, split="eval")
        if identity(e) not in seen:
            seen.add(identity(e))
            held_out.append(e)
    return Task(t.prompt_style, lambda i: example(seed, i), *_held_out_split(config, held_out),
                _prompt_fn(config), correct or _answer_match(config), None, seed)


def _data_path(config, key: str = "data_path") -> pathlib.Path:
    value = getattr(config.task, key)
    if not value:
        raise ConfigError(f"config key `task.{key}` must name the dataset's file or directory for "
                          f"task {config.task.name!r}")
    # A Hub dataset name ("openai/gsm8k", "owner/name/config_folder"): its cached snapshot, read like
    # a local directory.
    path = hub.resolve(value, kind="dataset", key=f"task.{key}")
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
    try:  # every distinct held-out problem, in a fixed order (the same for every seed)
        pool = arithmetic.held_out_pool(num_digits=t.num_digits, working=t.working)
    except ValueError as err:  # too many to enumerate (4+ digits): distinct random draws instead
        if not t.eval_size:
            raise ConfigError(f"config key `task.eval_size` = 0 (the whole held-out split): {err}") from None
        return _generated_task(config, example)
    return Task(t.prompt_style, lambda i: example(config.train.seed, i), *_held_out_split(config, pool),
                _prompt_fn(config), _answer_match(config), None, config.train.seed)


def _countdown(config) -> Task:
    t, style = config.task, config.task.prompt_style
    return _generated_task(
        config, lambda seed, i, split="train": countdown.example(seed, i, num_numbers=t.num_numbers, split=split),
        correct=lambda c, e: rewards_lib.countdown_reward(c, e.meta["numbers"], e.meta["target"], style=style),
        identity=lambda e: (tuple(sorted(e.meta["numbers"])), e.meta["target"]))  # the split's own identity


def _code(config) -> Task:
    # The prompt already asks for one fenced Python block (task.instruction's answer-style text would
    # contradict it); correctness = every hidden test passes in the sandbox. With task.data_path:
    # MBPP / HumanEval-style records instead of the generated problems.
    t = config.task
    code.require_sandbox("task.name")  # its correctness runs the model's programs
    correct = lambda c, e: code.code_tests(c, e, all_or_nothing=True, timeout_s=code_timeout(config))  # noqa: E731
    if t.data_path:
        read = lambda path, split: code.load_records(path, split)  # noqa: E731
        task = records_task(config, _read(config, t.train_split, read), _read(config, t.eval_split, read),
                            correct=correct)
    else:
        task = _generated_task(config, code.example, correct=correct)
    return task._replace(prompt=lambda e: e.prompt, format=code.code_format)


def code_timeout(config) -> float:
    """The sandbox's wall clock per program: half of rewards.timeout_seconds (at most 5 s), so the
    sandbox, not the verifier alarm, ends a runaway program."""
    return min(5.0, 0.5 * config.rewards.timeout_seconds)


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
    "arithmetic": _arithmetic, "code": _code, "countdown": _countdown, "gsm8k": _gsm8k, "math500": _math500,
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
    _check_held_out(name, task)
    return task


def _check_held_out(name: str, task: Task) -> None:
    """Held-out sets that would count a problem twice, or report on problems that steer SFT or that
    training sees, give wrong accuracies with no error: refuse them (a user's task included)."""
    key = lambda e: normalized_problem(e.prompt)  # noqa: E731
    for what, examples in (("eval_examples", task.eval_examples), ("validation_examples", task.validation_examples)):
        if len({key(e) for e in examples}) < len(examples):
            raise ConfigError(f"config key `task.name` = {name!r}: its {what} repeat problems "
                              f"(build them with grpo_jax.tasks.distinct)")
    evals = {key(e) for e in task.eval_examples}
    if any(key(e) in evals for e in task.validation_examples):
        raise ConfigError(f"config key `task.name` = {name!r}: its validation_examples overlap its eval_examples")
    if task.train_records is not None and any(key(e) in evals for e in task.train_records):
        raise ConfigError(f"config key `task.name` = {name!r}: training problems overlap its eval_examples")


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
