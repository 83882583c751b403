"""The `code` task family (grpo_jax.tasks.code): problems, split, extractor, rewards, config."""
import time

import pytest

from grpo_jax import config as cfg_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax import sandbox as sandbox_lib
from grpo_jax import tasks
from grpo_jax.tasks import code


def _sandbox_works() -> bool:
    try:
        code.sandbox_pool()
        return True
    except (sandbox_lib.SandboxUnavailable, OSError):
        return False


needs_sandbox = pytest.mark.skipif(not _sandbox_works(), reason="namespaces sandbox unavailable here")

ADD7 = code.Example("p", "", {"tests": ["assert add_k(3) == 10", "assert add_k(-7) == 0", "assert add_k(0) == 7"]})


def _fenced(body: str, tag: str = "python") -> str:
    return f"```{tag}\n{body}```"


# --------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------
def test_hand_built_problem_has_hand_computed_tests():
    t = [row[0] for row in code.TEMPLATES].index("add_k")
    name, prompt, source, tests = code.problem(t, {"k": 7})
    assert name == "add_k"
    assert prompt.startswith("Write a Python function `add_k(x)` that returns x plus 7.")
    assert "```python" in prompt
    assert len(tests) == code.NUM_TESTS
    for test in tests:  # "assert add_k(a) == b" with b = a + 7, checked by hand arithmetic
        call, expected = test.removeprefix("assert add_k(").split(") == ")
        assert int(expected) == int(call) + 7


@needs_sandbox
def test_every_template_reference_passes_and_wrong_solutions_fail():
    pool = code.sandbox_pool()
    assert len(code.TEMPLATES) >= 30
    items, names = [], []
    for t, row in enumerate(code.TEMPLATES):
        params = code._parameters(row[4], code._Draws(("test", t)))
        name, prompt, source, tests = code.problem(t, params)
        assert len(set(tests)) == len(tests) >= 3 and all(s.startswith(f"assert {name}(") for s in tests)
        items += [(source, tests), (f"def {name}(*args):\n    return None\n", tests)]
        names.append(name)
    results = pool.run_many(items)
    for name, right, wrong in zip(names, results[::2], results[1::2]):
        assert right.status == "ok" and right.passed == right.total, (name, right)
        assert wrong.passed == 0, (name, wrong)


def test_examples_are_pure_and_splits_disjoint():
    a, b = code.example(3, 11), code.example(3, 11)
    assert a == b
    train = {code.example(s, i).prompt for s in (0, 1) for i in range(300)}
    held_out = {code.example(0, i, split="eval").prompt for i in range(100)}
    assert len(train) > 250 and len(held_out) > 80  # enough distinct problems
    assert not train & held_out
    assert len({code.example(0, i).meta["template"] for i in range(300)}) == len(code.TEMPLATES)
    with pytest.raises(ValueError, match="split"):
        code.example(0, 0, split="test")


def test_task_from_config():
    config = cfg_lib.Config()
    config.task.name, config.task.eval_size = "code", 40
    config.rewards.weights = {"code_tests": 1.0, "code_format": 0.1}
    cfg_lib.validate(config)
    task = tasks.from_config(config)
    assert len(task.eval_examples) == 40
    train = {task.train_example(i).prompt for i in range(200)}
    assert not train & {e.prompt for e in task.eval_examples}
    e = task.eval_examples[0]
    assert task.prompt(e) == e.prompt  # no answer-style instruction: the prompt asks for a code block


@needs_sandbox
def test_format_of_the_code_task_is_one_fenced_block():
    # Before: eval_format and the "format" reward scored code in the math answer style (0 for every
    # program: the code runs logged eval_format 0.0 with 100 % of completions one fenced block).
    config = cfg_lib.Config()
    config.task.name, config.task.eval_size = "code", 4
    config.rewards.weights = {"correctness": 1.0, "format": 0.5}
    task = tasks.from_config(config)
    one_block = _fenced("def add_k(x):\n    return x + 7\n")
    assert task.format(one_block) == 1.0 and task.format(one_block + one_block) == 0.0
    verifiers = rewards_lib.from_config(config, task)
    assert verifiers["format"](one_block, ADD7) == 1.0


def test_config_validation_accepts_code_names_and_rejects_typos():
    config = cfg_lib.Config()
    config.task.name = "code"
    config.rewards.weights = {"code_tests": 1.0, "code_format": 0.2}
    config.rewards.code_all_or_nothing = True
    cfg_lib.validate(config)
    config.rewards.weights = {"code_test": 1.0}
    with pytest.raises(cfg_lib.ConfigError, match="rewards.weights.code_test"):
        cfg_lib.validate(config)


# --------------------------------------------------------------------------------------------------
# Extractor
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("```\nx = 1\n```", "x = 1\n"),
    ("text ```py\na\n``` more ```python\nb\n``` end", "b\n"),  # the last block
    ("```python\na\n```\n```text\nnot code\n```", "a\n"),  # the last *Python* block
    ("```python\na\n```\n```python\nunterminated", "a\n"),
    ("no fences at all", None),
    ("```python", None),
    ("```python\n   \n```", None),  # blank block
    ("```python\n" + "x" * (code.MAX_CODE_CHARS + 1) + "\n```", None),
    ("```\n1\n```" * (code.MAX_FENCES // 2 + 1), None),  # spraying fences
])
def test_extract_code_hand_cases(text, expected):
    assert code.extract_code(text) == expected


@pytest.mark.parametrize("hostile", [
    "`" * (1 << 20), "```" + "\n" * (1 << 20), "```python\n" + "a" * (1 << 20), "``\n" * (1 << 18),
    ("```python\n" + "x" * 1000 + "\n```\n") * 60,
])
def test_extract_code_is_fast_on_hostile_megabyte(hostile):
    start = time.perf_counter()
    code.extract_code(hostile)
    code.code_format(hostile)
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------------
RIGHT = "Sure.\n" + _fenced("def add_k(x):\n    return x + 7\n")
WRONG = _fenced("def add_k(x):\n    return x + 6\n")
HALF = _fenced("def add_k(x):\n    return 7 if x == 0 else x + 6\n")  # passes only add_k(0) == 7
SYNTAX = _fenced("def add_k(x)\n    return x + 7\n")
TWO = _fenced("def add_k(x):\n    return 0\n") + "\nbetter:\n" + RIGHT


@needs_sandbox
@pytest.mark.parametrize("completion, fraction, all_or_nothing, fmt", [
    (RIGHT, 1.0, 1.0, 1.0), (WRONG, 0.0, 0.0, 1.0), (HALF, 1 / 3, 0.0, 1.0), (SYNTAX, 0.0, 0.0, 1.0),
    ("def add_k(x):\n    return x + 7", 0.0, 0.0, 0.0),  # no block
    (TWO, 1.0, 1.0, 0.0),  # the last block is scored; two blocks break the format
    (_fenced("while True:\n    pass\n"), 0.0, 0.0, 1.0),  # runaway program: the sandbox's timeout
])
def test_code_rewards_on_hand_completions(completion, fraction, all_or_nothing, fmt):
    assert code.code_tests(completion, ADD7) == pytest.approx(fraction)
    assert code.code_tests(completion, ADD7, all_or_nothing=True) == all_or_nothing
    assert code.code_format(completion, ADD7) == fmt


@needs_sandbox
def test_rewards_from_config_reuse_one_pool_and_read_the_switch():
    config = cfg_lib.Config()
    config.task.name, config.task.eval_size = "code", 8
    config.rewards.weights = {"code_tests": 1.0, "code_format": 0.5}
    task = tasks.from_config(config)
    pool = code.sandbox_pool()
    verifiers = rewards_lib.from_config(config, task)
    golds = [ADD7] * 4
    rewards, components, stats = rewards_lib.combine(
        [RIGHT, HALF, "no block", TWO], golds, weights=config.rewards.weights, verifiers=verifiers,
        time_limit=config.rewards.timeout_seconds)
    assert components["code_tests"].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 1.0])
    assert components["code_format"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert rewards.tolist() == pytest.approx([1.5, 1 / 3 + 0.5, 0.0, 1.0])
    assert stats["verifier_errors"] == stats["verifier_timeouts"] == 0
    assert code.sandbox_pool() is pool
    config.rewards.code_all_or_nothing = True
    verifiers = rewards_lib.from_config(config, task)
    assert verifiers["code_tests"](HALF, ADD7) == 0.0 and verifiers["code_tests"](RIGHT, ADD7) == 1.0
    e = task.eval_examples[0]  # the task's own correctness: its reference solution passes
    assert task.correct(_fenced(e.answer), e) == 1.0
    assert task.correct(WRONG, e) == 0.0


# --------------------------------------------------------------------------------------------------
# MBPP / HumanEval-style records
# --------------------------------------------------------------------------------------------------
HUMANEVAL_TEST = ("METADATA = {}\n\ndef check(candidate):\n    assert candidate(2) == 4\n"
                  "    for _ in range(1):\n        pass\n    assert candidate(-3) == -6\n")


def _write_records(path):
    import json
    train = [
        {"text": "Write a function `double(x)` returning 2*x.", "code": "def double(x):\n    return 2 * x\n",
         "test_list": ["assert double(2) == 4", "assert double(0) == 0"]},
        {"prompt": "Write `neg(x)`.", "tests": ["assert neg(1) == -1"]},
        {"prompt": "def twice(x):\n    \"\"\"2*x\"\"\"\n", "canonical_solution": "    return x + x\n",
         "test": HUMANEVAL_TEST, "entry_point": "twice"},  # also held out: dropped from training
    ]
    path.mkdir()
    (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (path / "test.jsonl").write_text(json.dumps(train[2]) + "\n")


def test_humaneval_tests_become_assert_strings():
    assert code.humaneval_tests(HUMANEVAL_TEST, "twice") == ["assert twice(2) == 4", "assert twice(-3) == -6"]
    with pytest.raises(ValueError, match="x.jsonl:3.*check"):
        code.humaneval_tests("assert True\n", "f", where="x.jsonl:3")


@needs_sandbox
def test_code_records_task(tmp_path):
    _write_records(tmp_path / "data")
    config = cfg_lib.Config()
    config.task.name, config.task.data_path, config.task.eval_size = "code", str(tmp_path / "data"), 0
    config.rewards.weights = {"code_tests": 1.0}
    cfg_lib.validate(config)
    task = tasks.from_config(config)
    assert [e.meta["name"] for e in task.train_records] == ["", ""]  # the HumanEval one is held out
    (held,) = task.eval_examples
    assert held.meta["tests"] == ["assert twice(2) == 4", "assert twice(-3) == -6"]
    assert held.prompt.endswith(code.INSTRUCTION) and task.prompt(held) == held.prompt
    assert task.correct(_fenced(held.answer), held) == 1.0
    assert task.correct(_fenced("def twice(x):\n    return x * x\n"), held) == 0.0  # passes twice(2) only
    assert code.code_tests(_fenced("def twice(x):\n    return x * x\n"), held) == 0.5
    double = task.train_records[0]
    assert task.correct(_fenced(double.answer), double) == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "tests": []}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1.*'tests'"):
        code.load_records(bad, "train")


@needs_sandbox
def test_verifier_alarm_mid_run_leaves_the_pool_clean():
    # The verifier's alarm fires while the sandbox still runs a slow program: that row times out,
    # and the next rows are scored right (no stale result read back from an interrupted worker).
    slow = _fenced("import time\ntime.sleep(0.6)\ndef add_k(x):\n    return x + 7\n")
    verifiers = {"code_tests": lambda c, e: code.code_tests(c, e, timeout_s=2.0)}
    _, components, stats = rewards_lib.combine(
        [slow, WRONG, RIGHT], [ADD7] * 3, weights={"code_tests": 1.0}, verifiers=verifiers, time_limit=0.2)
    assert stats["verifier_timeouts"] == 1
    assert components["code_tests"].tolist() == [0.0, 0.0, 1.0]


def test_an_unavailable_sandbox_is_a_config_error_at_set_up(monkeypatch):
    """Without it every code_tests call would fail into a verifier error scored 0 and the run would
    learn nothing; the task and the reward start the pool at set-up and name the key instead."""
    from grpo_jax import ConfigError
    from grpo_jax.sandbox import SandboxUnavailable

    def unavailable():
        raise SandboxUnavailable("user namespaces are off")

    monkeypatch.setattr(code, "sandbox_pool", unavailable)
    with pytest.raises(ConfigError, match=r"`rewards.weights.code_tests`.*user namespaces are off"):
        code.require_sandbox("rewards.weights.code_tests")
