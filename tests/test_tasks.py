"""Task readers (over ../shared/data), synthetic generators and prompt formatting."""
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpo_jax.rewards import (
    countdown_reward,
    correctness,
    extract_answer,
    format_reward,
    math_reward,
    normalize_number,
)
from grpo_jax.tasks import Example, arithmetic, countdown, gsm8k, math500, prompts, svamp
from grpo_jax.tasks.prompts import STYLES, format_messages, format_prompt, format_target


# --------------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------------
def test_gsm8k_every_test_gold_is_a_number(shared_data):
    examples = gsm8k.load(shared_data / "gsm8k", "test")
    assert len(examples) == 1319
    assert all(isinstance(e, Example) for e in examples)
    for e in examples:
        assert normalize_number(e.answer) == e.answer, e  # already canonical: no commas, no "+"
        assert "####" not in e.meta["reasoning"] and "<<" not in e.meta["reasoning"]
    # Hand-checked: Janet's ducks 16 - 3 - 4 = 9 eggs at $2 -> 18; the robe 2 + 2/2 -> 3;
    # Johnny's lego 500 + 1500 + 125 = 2125 (the file says "#### 2,125": comma stripped);
    # Southlandia's temperatures average to -10 (negative gold).
    assert examples[0].answer == "18" and examples[0].prompt.startswith("Janet\u2019s ducks lay 16 eggs")
    assert examples[1].answer == "3" and examples[1].prompt.startswith("A robe takes 2 bolts")
    assert examples[146].answer == "2125" and "lego boxed set" in examples[146].prompt
    assert examples[489].answer == "-10"
    assert examples[0].meta == {
        "id": "gsm8k/test/0",
        "reasoning": "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.",
    }


def test_gsm8k_sft_targets_score_one_in_every_style(shared_data):
    examples = gsm8k.load(shared_data / "gsm8k" / "test.jsonl")  # a file path works too
    for style in STYLES:
        for e in examples:
            target = format_target(e.meta["reasoning"], e.answer, style=style)
            assert correctness(target, e.answer, style=style) == 1.0, (style, e.meta["id"])
            assert format_reward(target, style=style) == 1.0, (style, e.meta["id"])


def test_gsm8k_train_split(shared_data):
    assert len(gsm8k.load(shared_data / "gsm8k", "train")) == 7473


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gsm8k_bad_input_names_file_line_and_field(tmp_path):
    good = json.dumps({"question": "q", "answer": "a\n#### 1,000"})
    assert gsm8k.load(_write(tmp_path / "ok.jsonl", [good, ""]))[0].answer == "1000"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        gsm8k.load(tmp_path, "nope")
    cases = {
        "json.jsonl": ([good, "{not json"], r"json.jsonl:2: invalid JSON"),
        "field.jsonl": ([good, good, json.dumps({"question": "q"})], r"field.jsonl:3: missing field 'answer'"),
        "type.jsonl": ([json.dumps({"question": 5, "answer": "#### 1"})], r"type.jsonl:1: field 'question' has type int"),
        "hash.jsonl": ([json.dumps({"question": "q", "answer": "42"})], r"hash.jsonl:1: .*no '####'"),
        "gold.jsonl": ([json.dumps({"question": "q", "answer": "#### five"})], r"gold.jsonl:1: .*'#### five'.*not a number"),
        "array.jsonl": (["[1, 2]"], r"array.jsonl:1: expected a JSON object"),
    }
    for name, (lines, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            gsm8k.load(_write(tmp_path / name, lines))


# --------------------------------------------------------------------------------------------------
# MATH / MATH-500 / SVAMP
# --------------------------------------------------------------------------------------------------
def test_math500_answers_match_the_last_boxed_of_the_math_solutions(shared_data):
    held_out = math500.load(shared_data / "math500")
    full = math500.load(shared_data / "math")
    assert (len(held_out), len(full)) == (500, 5000)
    # MATH-500 golds come from its "answer" field, MATH golds from the last \boxed{} of the
    # solution: for all 500 shared problems the two agree, which checks the brace matching.
    by_problem = {e.prompt: e.answer for e in full}
    assert all(by_problem[e.prompt] == e.answer for e in held_out)
    assert held_out[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert held_out[0].meta["id"] == "math500/test/precalculus/807.json"
    assert full[0].answer == "2" and full[2].answer == "\\dfrac{9}{7}"
    train = math500.load_train(shared_data / "math", shared_data / "math500")
    assert len(train) == 4500
    assert not {e.prompt for e in train} & {e.prompt for e in held_out}


def test_math500_targets_are_verified_and_golds_pass_the_sympy_screen(shared_data):
    import sympy
    from math_verify import parse

    from grpo_jax.rewards import MAX_SYMPY_BITS, MAX_SYMPY_CHARS, _magnitude_bits

    for e in math500.load(shared_data / "math500"):
        target = format_target("work", e.answer, style="think")
        assert math_reward(target, e.answer) == 1.0, e.meta["id"]
        # Every gold is short and small enough to reach math_verify.verify.
        assert len(e.answer) <= MAX_SYMPY_CHARS
        parsed = parse(f"\\boxed{{{e.answer}}}", parsing_timeout=None)
        assert all(_magnitude_bits(x) <= MAX_SYMPY_BITS for x in parsed if isinstance(x, sympy.Basic)), e.answer


def test_last_boxed():
    assert math500.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert math500.last_boxed("\\boxed{x^{2}+\\{1\\}}") == "x^{2}+\\{1\\}"
    assert math500.last_boxed("no box") is None
    assert math500.last_boxed("\\boxed{1") is None


def test_math_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"m.jsonl:1: field 'solution' has no \\boxed"):
        math500.load(_write(tmp_path / "m.jsonl", [json.dumps({"problem": "p", "solution": "s"})]))


def test_svamp(shared_data, tmp_path):
    examples = svamp.load(shared_data / "svamp")
    assert len(examples) == 1000
    assert all(normalize_number(e.answer) == e.answer for e in examples)
    assert examples[0] == Example(
        prompt="Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?",
        answer="51",  # 76 - 25; the file stores 51.0
        meta={"id": "chal-1", "equation": "( 76.0 - 25.0 )", "type": "Subtraction"},
    )
    assert examples[2].answer == "17"  # Paco: 26 - 9 salty cookies
    bad = tmp_path / "SVAMP.json"
    bad.write_text(json.dumps([{"Body": "b", "Question": "q", "Answer": 2.5}, {"Body": "b", "Question": "q"}]))
    with pytest.raises(ValueError, match=r"SVAMP.json: item 1: missing field 'Answer'"):
        svamp.load(tmp_path)
    bad.write_text(json.dumps([{"Body": "b", "Question": "q", "Answer": 2.5}]))
    assert svamp.load(bad)[0].answer == "2.5"


# --------------------------------------------------------------------------------------------------
# arithmetic generator
# --------------------------------------------------------------------------------------------------
def test_arithmetic_is_a_pure_function_of_seed_and_index():
    # Pinned values: these must never change (hash-derived, not numpy / random streams).
    assert arithmetic.example(0, 0) == Example(
        prompt="What is 47+39?",
        answer="86",
        meta={"id": "arithmetic/train/0/0", "a": 47, "b": 39, "op": "+", "reasoning": "47+39=86"},
    )
    assert arithmetic.example(0, 0, split="eval").prompt == "What is 43+58?"
    sequence = [arithmetic.example(3, i, ops="+-*") for i in range(300)]
    assert arithmetic.example(3, 299, ops="+-*") == sequence[299]  # no dependence on earlier items
    assert len({e.prompt for e in sequence}) >= 290  # different indices -> different problems
    assert [e.prompt for e in sequence[:50]] != [arithmetic.example(4, i, ops="+-*").prompt for i in range(50)]
    for e in sequence:
        a, b, op = e.meta["a"], e.meta["b"], e.meta["op"]
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert int(e.answer) == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert e.meta["reasoning"] == f"{a}{op}{b}={e.answer}"
    assert {e.meta["op"] for e in sequence} == {"+", "-", "*"}


def test_arithmetic_train_and_eval_share_no_operand_pair():
    def pairs(split, seeds, n):
        out = set()
        for seed in seeds:
            for i in range(n):
                e = arithmetic.example(seed, i, ops="+-", split=split)
                out.add(frozenset((e.meta["a"], e.meta["b"])))
        return out

    train, held_out = pairs("train", range(4), 1000), pairs("eval", range(4), 150)
    assert len(train) > 2000 and len(held_out) > 200
    assert not train & held_out
    # The held-out pool is about 10% of the 4095 unordered two-digit pairs.
    from grpo_jax.tasks import in_eval_split

    pool = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    share = sum(in_eval_split(("arithmetic", 2, a, b)) for a, b in pool) / len(pool)
    assert 0.08 < share < 0.12


def test_arithmetic_options():
    e = arithmetic.example(1, 2, num_digits=4, ops="*")
    assert 1000 <= e.meta["a"] <= 9999 and e.meta["op"] == "*"
    one = [arithmetic.example(0, i, num_digits=1) for i in range(50)]
    assert all(1 <= e.meta["a"] <= 9 for e in one)
    for kwargs, message in [({"ops": "/"}, "ops"), ({"num_digits": 0}, "num_digits"), ({"split": "test"}, "split")]:
        with pytest.raises(ValueError, match=message):
            arithmetic.example(0, 0, **kwargs)


def test_column_working_by_hand():
    assert arithmetic.column_working(47, 39) == "7+9=16\n4+3+1=8"
    assert arithmetic.column_working(98, 83) == "8+3=11\n9+8+1=18"
    assert arithmetic.column_working(12, 35) == "2+5=7\n1+3=4"
    assert arithmetic.column_working(5, 7) == "5+7=12"
    assert arithmetic.column_working(999, 1) == "9+1=10\n9+0+1=10\n9+0+1=10"
    e = arithmetic.example(0, 0, working="columns")
    assert e.meta["reasoning"] == "7+9=16\n4+3+1=8"
    assert e.prompt == arithmetic.example(0, 0).prompt and e.answer == "86"  # same problem, other working
    with pytest.raises(ValueError, match="addition only"):
        arithmetic.example(0, 0, ops="+-", working="columns")
    with pytest.raises(ValueError, match="working must be one of"):
        arithmetic.example(0, 0, working="digits")


@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_column_working_spells_the_sum(a, b):
    # Reading the answer off the working: the last line's sum, then each earlier line's units digit
    # from the top line's down to the units column -- and every line is a true one-digit fact.
    lines = arithmetic.column_working(a, b).split("\n")
    carry = 0
    for line in lines:
        left, total = line.split("=")
        terms = [int(t) for t in left.split("+")]
        assert sum(terms) == int(total) and all(0 <= t <= 9 for t in terms[:2])
        assert terms[2:] == ([1] if carry else [])
        carry = int(total) // 10
    digits = lines[-1].split("=")[1] + "".join(line.split("=")[1][-1] for line in reversed(lines[:-1]))
    assert int(digits) == a + b


def test_arithmetic_sft_target():
    e = arithmetic.example(0, 0)
    target = format_target(e.meta["reasoning"], e.answer, style="reasoning")
    assert target == "<reasoning>\n47+39=86\n</reasoning>\n<answer>\n86\n</answer>"
    assert correctness(target, e.answer) == 1.0 and format_reward(target) == 1.0


# --------------------------------------------------------------------------------------------------
# countdown generator + verifier
# --------------------------------------------------------------------------------------------------
def test_countdown_verifier_accepts_every_generated_solution_and_rejects_near_misses():
    examples = [countdown.example(0, i) for i in range(500)]
    assert examples[0].answer == "((87 - 6) - 25) + 22" and examples[0].meta["numbers"] == [6, 22, 87, 25]
    assert len({(tuple(e.meta["numbers"]), e.meta["target"]) for e in examples}) == 500
    for e in examples:
        numbers, target = e.meta["numbers"], e.meta["target"]
        assert len(numbers) == 4 and all(1 <= n <= 100 for n in numbers) and 1 <= target <= 100
        assert e.answer == e.meta["solution"]
        completion = format_target(e.meta["reasoning"], e.answer, style="reasoning")
        assert countdown_reward(completion, numbers, target) == 1.0, e
        assert countdown_reward(completion, numbers, target + 1) == 0.0  # wrong target
        assert countdown_reward(completion, numbers + [7], target) == 0.0  # a given number unused
        assert countdown_reward(completion, numbers[:-1], target) == 0.0  # a number not given
        doubled = f"({e.answer}) + {numbers[0]} - {numbers[0]}"  # same value, numbers[0] used 3 times
        assert countdown_reward(f"<answer>{doubled}</answer>", numbers, target) == 0.0
        assert countdown_reward(f"<answer>{e.answer} + 0</answer>", numbers, target) == 0.0
        assert countdown_reward(f"<answer>{e.answer}</answer> <answer>1</answer>", numbers, target) == 0.0
        # The reasoning's last step ends in the target.
        assert e.meta["reasoning"].endswith(f"= {target}")


def test_countdown_determinism_options_and_split():
    assert countdown.example(5, 17) == countdown.example(5, 17)
    assert countdown.example(5, 17) != countdown.example(5, 18)
    assert countdown.example(5, 17) != countdown.example(6, 17)
    six = countdown.example(1, 1, num_numbers=6, max_number=25, max_target=1000)
    assert len(six.meta["numbers"]) == 6 and max(six.meta["numbers"]) <= 25
    assert countdown_reward(f"<answer>{six.answer}</answer>", six.meta["numbers"], six.meta["target"]) == 1.0

    def keys(split, n):
        return {(tuple(sorted(e.meta["numbers"])), e.meta["target"]) for e in (countdown.example(0, i, split=split) for i in range(n))}

    assert not keys("train", 400) & keys("eval", 100)


# --------------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------------
def test_prompts():
    assert format_prompt("What is 1+1?", style="reasoning") == (
        "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
        "\n\nWhat is 1+1?"
    )
    assert format_prompt("Q", style="think").endswith("User: Q\nAssistant:")
    assert format_prompt("Q", style="plain") == "Q\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert format_messages("Q", style="reasoning") == [
        {"role": "system", "content": prompts.REASONING_INSTRUCTION},
        {"role": "user", "content": "Q"},
    ]
    assert [m["role"] for m in format_messages("Q", style="plain")] == ["user"]
    assert format_target("r", "5", style="plain") == "r\nThe final answer is \\boxed{5}."
    assert format_prompt("Q", style="final") == "Q\nGive the final answer as a number at the end."
    assert format_messages("Q", style="final") == [{"role": "user", "content": format_prompt("Q", style="final")}]
    assert format_target("r", "5", style="final") == "r\nThe answer is 5."
    for fn in (lambda: format_prompt("Q", style="chat"), lambda: format_target("r", "a", style="x")):
        with pytest.raises(ValueError, match="style must be one of"):
            fn()


_NO_MARKUP = st.text(st.characters(blacklist_characters="<>\\#{}", blacklist_categories=("Cs",)), min_size=1).filter(
    lambda s: s.strip()
)


@given(reasoning=_NO_MARKUP, answer=st.integers(-10**12, 10**12), style=st.sampled_from(STYLES))
def test_format_target_round_trips_through_the_verifiers(reasoning, answer, style):
    target = format_target(reasoning, str(answer), style=style)
    assert extract_answer(target, style=style) == str(answer)
    assert correctness(target, str(answer), style=style) == 1.0
    assert format_reward(target, style=style) == 1.0


# --- one guard for every task: training and held-out problems are disjoint ----------------------


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "gsm8k", "math500", "svamp"])
def test_training_and_held_out_problems_are_disjoint(name, request):
    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib

    c = cfg_lib.Config()
    c.task.name = name
    c.task.eval_size = 0 if name in ("gsm8k", "math500", "svamp") else 500
    if name in ("gsm8k", "math500", "svamp"):
        data = request.getfixturevalue("shared_data")
        c.task.data_path = str(data / name)
        if name == "math500":
            c.task.train_data_path = str(data / "math")
    task = tasks_lib.from_config(cfg_lib.validate(c))
    held_out = {tasks_lib.normalized_problem(e.prompt) for e in task.eval_examples + task.validation_examples}
    if task.train_records is not None:
        training = task.train_records
        assert len(training) > 0.5 * len(held_out) or name == "svamp"
    else:  # a generated task: its first 20,000 training problems
        training = [task.train_example(i) for i in range(20_000)]
    overlap = [e.prompt for e in training if tasks_lib.normalized_problem(e.prompt) in held_out]
    assert not overlap, overlap[:3]


def test_arithmetic_eval_size_zero_is_the_whole_held_out_split_for_every_seed():
    from grpo_jax import ConfigError
    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib

    def task(seed, **task_keys):
        c = cfg_lib.Config()
        c.task.name, c.task.eval_size, c.train.seed = "arithmetic", 0, seed
        for k, v in task_keys.items():
            setattr(c.task, k, v)
        return tasks_lib.from_config(cfg_lib.validate(c))

    a, b = task(0), task(1)
    prompts_a = [e.prompt for e in a.eval_examples]
    # every 2-digit pair (a, b), 10 <= a, b <= 99, whose unordered pair the split holds out: counted by hand
    pool = {f"What is {x}+{y}?" for x in range(10, 100) for y in range(10, 100)
            if arithmetic.in_eval_split(("arithmetic", 2, min(x, y), max(x, y)))}
    assert sorted(prompts_a) == sorted(pool) and len(prompts_a) == len(set(prompts_a)) == 799
    assert prompts_a == [e.prompt for e in b.eval_examples]  # the same problems, in the same order
    assert prompts_a[:5] != sorted(prompts_a)[:5]  # a hash order: any prefix is a uniform sample
    assert all(int(e.answer) == e.meta["a"] + e.meta["b"] for e in a.eval_examples)
    assert not {a.train_example(i).prompt for i in range(5000)} & pool
    assert [e.prompt for e in task(0, working="columns").eval_examples] == prompts_a
    with pytest.raises(ConfigError, match="task.eval_size"):
        task(0, num_digits=4)
    # the pool leaves nothing for SFT's validation: early stopping on it is refused, not skipped
    c = cfg_lib.Config()
    c.task.name, c.task.eval_size, c.sft.steps, c.sft.stop_accuracy = "arithmetic", 0, 10, 0.5
    with pytest.raises(ConfigError, match="sft.stop_accuracy"):
        tasks_lib.from_config(cfg_lib.validate(c))


def test_math500_trains_on_math_minus_math500(shared_data):
    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib

    c = cfg_lib.Config()
    c.task.name, c.task.eval_size = "math500", 0
    c.task.data_path, c.task.train_data_path = str(shared_data / "math500"), str(shared_data / "math")
    task = tasks_lib.from_config(cfg_lib.validate(c))
    assert len(task.eval_examples) + len(task.validation_examples) == 500
    assert len(task.train_records) == 4500  # the MATH test set less MATH-500 (PRM800K's split)


def test_gsm8k_through_tfds_equals_the_files(shared_data, tmp_path):
    # task.source="tfds": the dataset prepared once (offline, from the JSONL release) into a TFDS
    # data_dir, then read with tfds.data_source; the task is the same as from the files.
    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib
    from grpo_jax.tasks import tfds as tfds_lib

    tfds_lib.prepare(shared_data / "gsm8k", tmp_path / "tfds")
    files = cfg_lib.apply_overrides(cfg_lib.Config(), ["task.name=gsm8k", f"task.data_path={shared_data / 'gsm8k'}"])
    tfds = cfg_lib.apply_overrides(files, ["task.source=tfds", f"task.data_path={tmp_path / 'tfds'}"])
    a, b = (tasks_lib.from_config(cfg_lib.validate(c)) for c in (files, tfds))
    assert [(e.prompt, e.answer) for e in a.train_records] == [(e.prompt, e.answer) for e in b.train_records]
    assert [(e.prompt, e.answer) for e in a.eval_examples] == [(e.prompt, e.answer) for e in b.eval_examples]
    assert a.train_example(123).prompt == b.train_example(123).prompt


def test_records_task_reads_any_math_style_file(tmp_path):
    import json

    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib

    rows = [{"Body": f"Ann has {a} pens.", "Answer": float(a)} for a in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[30:]))
    c = cfg_lib.apply_overrides(cfg_lib.Config(), [
        "task.name=records", f"task.data_path={tmp_path}", "task.question_key=Body", "task.answer_key=Answer",
        "task.eval_size=0"])
    task = tasks_lib.from_config(cfg_lib.validate(c))
    assert len(task.train_records) == 30 and [e.answer for e in task.eval_examples] == [str(a) for a in range(30, 40)]
    assert task.correct("<reasoning>x</reasoning><answer>31</answer>", task.eval_examples[1]) == 1.0


# --------------------------------------------------------------------------- held-out sets (issue 23.2)

import pathlib  # noqa: E402

from grpo_jax import ConfigError  # noqa: E402


def _task_for(path, *overrides):
    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib

    return tasks_lib.from_config(cfg_lib.validate(cfg_lib.load_config(str(path), list(overrides))))


def _prompts(examples):
    from grpo_jax import tasks as tasks_lib

    return [tasks_lib.normalized_problem(e.prompt) for e in examples]


@pytest.mark.parametrize("seed", [0, 1])
def test_quickstart_held_out_sets_have_no_repeats_and_do_not_overlap(seed):
    # Drawn with replacement, the quick start's 512 eval rows held 378 distinct problems and 128 of
    # its 256 validation rows were eval problems: accuracy counted problems twice, and the SFT early
    # stop watched the very problems it was then reported on.
    repo = pathlib.Path(__file__).resolve().parents[1]
    task = _task_for(repo / "experiments" / "quickstart.py", f"train.seed={seed}")
    evals, validation = _prompts(task.eval_examples), _prompts(task.validation_examples)
    assert len(evals) == len(set(evals)) == 512
    assert len(validation) == len(set(validation)) == 256
    assert not set(evals) & set(validation)
    assert not set(evals + validation) & set(_prompts(task.train_example(i) for i in range(5000)))
    # the same held-out problems for every seed: accuracies of two seeds are paired
    other = _task_for(repo / "experiments" / "quickstart.py", f"train.seed={1 - seed}")
    assert _prompts(other.eval_examples) == evals


def test_countdown_held_out_sets_are_distinct_problems():
    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib

    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["task.name=countdown", "task.eval_size=300",
                                                   "sft.validation_size=200"])
    task = tasks_lib.from_config(cfg_lib.validate(c))
    ident = [(tuple(sorted(e.meta["numbers"])), e.meta["target"]) for e in task.eval_examples + task.validation_examples]
    assert len(task.eval_examples) == 300 and len(task.validation_examples) == 200
    assert len(set(ident)) == 500


def test_dataset_held_out_repeats_are_counted_once(tmp_path):
    import json

    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib

    rows = [{"question": f"Ann has {a} pens.", "answer": str(a)} for a in range(40)]
    held = rows[30:] + [{"question": "ann  HAS 31 pens.", "answer": "31"}]  # the same problem again
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["task.name=records", f"task.data_path={tmp_path}",
                                                   "task.eval_size=4", "sft.validation_size=100"])
    task = tasks_lib.from_config(cfg_lib.validate(c))
    assert [e.answer for e in task.eval_examples] == ["30", "31", "32", "33"]
    assert [e.answer for e in task.validation_examples] == [str(a) for a in range(34, 40)]
    # an SFT early stop that would watch fewer validation problems than asked is refused
    stop = cfg_lib.apply_overrides(c, ["sft.steps=10", "sft.eval_every=5", "sft.stop_accuracy=0.5"])
    with pytest.raises(ConfigError, match="sft.validation_size"):
        tasks_lib.from_config(cfg_lib.validate(stop))


def test_a_users_task_with_repeated_or_overlapping_held_out_problems_is_refused(tmp_path, monkeypatch):
    from grpo_jax import config as cfg_lib
    from grpo_jax import tasks as tasks_lib
    from grpo_jax.tasks import Example

    module = tmp_path / "bad_task_module.py"
    module.write_text(
        "from grpo_jax import tasks\n"
        "from grpo_jax.tasks import Example\n"
        "def repeats(config):\n"
        "    t = tasks.records_task(config, [Example('What is 1+1?', '2', {})], [Example('What is 2+2?', '4', {})])\n"
        "    return t._replace(eval_examples=t.eval_examples * 2)\n"
        "def overlap(config):\n"
        "    t = tasks.records_task(config, [Example('What is 1+1?', '2', {})], [Example('What is 2+2?', '4', {})])\n"
        "    return t._replace(validation_examples=t.eval_examples)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, match in (("repeats", "repeat"), ("overlap", "overlap")):
        c = cfg_lib.apply_overrides(cfg_lib.Config(), [f"task.name=bad_task_module:{name}"])
        with pytest.raises(ConfigError, match=match):
            tasks_lib.from_config(cfg_lib.validate(c))
