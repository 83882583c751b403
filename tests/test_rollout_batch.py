"""The sampled batch the update sees: DAPO dynamic sampling (which groups are kept, the static-shape
fill, its metrics), truncated-completion masking, and prompts too long for the limit dropped at load.

A verifier whose output is known before sampling makes the kept groups predictable: problems whose
gold answer is even score a hash of the completion (distinct completions differ: signal), the others
always 0 (a tied group: dropped).
"""
import zlib

import jax
import numpy as np
import pytest

from grpo_jax import config as cfg_lib
from grpo_jax import build, rollout, tasks
from grpo_jax import tokenizer as tok_lib

from test_train import QUICKSTART, TINY


def _setup(*extra):
    overrides = [o for o in TINY if not o.startswith("sft.")] + ["sft.steps=0", "rewards.weights.format=0", "mesh.data=1",
                                                                  "mesh.fsdp=1", *extra]
    config, workdir = cfg_lib.parse_command_line(["--config", QUICKSTART, "--workdir", "unused"]
                                                 + [f"--config.{o}" for o in overrides])
    return build.setup(config, workdir)


def _even_answers_have_signal(s):
    def verifier(completion, example):
        return zlib.crc32(completion.encode()) % 1000 / 1000 if int(example.answer) % 2 == 0 else 0.0
    return s._replace(verifiers={"correctness": verifier})


def _keys():
    return jax.random.fold_in(jax.random.key(0), 0)


def test_dynamic_sampling_keeps_exactly_the_groups_with_signal_in_order():
    s = _even_answers_have_signal(_setup("grpo.dynamic_sampling=true", "grpo.dynamic_sampling_factor=2.0",
                                         "grpo.dynamic_sampling_max_rounds=4"))
    b, G, per_round, step = 4, 4, 8, 3
    gen, valid, metrics = rollout.collect(s, s.params, step, _keys())
    # Known in advance: the stream (step * rounds + r) * per_round + i, even golds kept, in order.
    stream = [s.task.train_example((step * 4 + r) * per_round + i) for r in range(4) for i in range(per_round)]
    even = [e for e in stream if int(e.answer) % 2 == 0]
    rounds = next(r + 1 for r in range(4) if len([e for e in stream[: (r + 1) * per_round]
                                                  if int(e.answer) % 2 == 0]) >= b)
    assert [e.prompt for e in gen.examples] == [e.prompt for e in even[:b]]
    assert valid.tolist() == [1.0] * (b * G)
    assert metrics["dynamic_rounds"] == rounds
    assert metrics["dynamic_extra_samples"] == (rounds * per_round - b) * G
    seen = stream[: rounds * per_round]
    assert metrics["dynamic_kept_fraction"] == pytest.approx(np.mean([int(e.answer) % 2 == 0 for e in seen]))
    grouped = gen.rewards.reshape(b, G)
    assert np.all(grouped.max(1) > grouped.min(1))  # every kept group carries signal
    # The rows of group j are the completions sampled for its problem: rewards match the verifier.
    assert gen.rewards.tolist() == pytest.approx(
        [zlib.crc32(t.encode()) % 1000 / 1000 for t in gen.completions])


def test_dynamic_sampling_short_batch_is_filled_with_masked_rows():
    # Only problems whose answer is 0 mod 40 have signal: rare, so 1 round of 8 problems keeps few.
    s = _setup("grpo.dynamic_sampling=true", "grpo.dynamic_sampling_max_rounds=1")
    rare = lambda c, e: zlib.crc32(c.encode()) % 1000 / 1000 if int(e.answer) % 40 == 0 else 0.0  # noqa: E731
    s = s._replace(verifiers={"correctness": rare})
    for step in range(40):
        stream = [s.task.train_example(step * 8 + i) for i in range(8)]
        kept = [e for e in stream if int(e.answer) % 40 == 0]
        if 0 < len(kept) < 4:
            break
    gen, valid, metrics = rollout.collect(s, s.params, step, _keys())
    assert valid.tolist() == [1.0] * (4 * len(kept)) + [0.0] * (4 * (4 - len(kept)))
    assert metrics["dynamic_filled_fraction"] == len(kept) / 4
    c = s.config
    advantages, loss_mask, _ = rollout.update_inputs(c, gen, valid, s.eos_ids)
    assert np.all(advantages[valid == 0] == 0) and np.all(loss_mask[valid == 0] == 0)
    assert np.abs(advantages[valid == 1]).max() > 0


def test_mask_truncated_completions_leaves_truncated_rows_out_of_the_loss_only():
    s = _setup()
    eos = s.eos_ids[0]
    tokens = np.array([[5, 6, eos, eos], [5, 6, 7, 8], [5, eos, eos, eos], [9, 9, 9, 9]], np.int32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    gen = rollout.Generation([], None, None, tokens, mask, np.array([1.0, 0.0, 0.0, 1.0], np.float32), {}, {}, [])
    valid = np.ones(4, np.float32)
    c = cfg_lib.apply_overrides(s.config, ["grpo.group_size=2", "grpo.mask_truncated_completions=true"])
    advantages, loss_mask, ended = rollout.update_inputs(c, gen, valid, s.eos_ids)
    assert ended.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(loss_mask, mask * np.array([1, 0, 1, 0])[:, None])
    # The truncated rows' rewards still count in their groups' advantages.
    np.testing.assert_allclose(advantages, [0.7071, -0.7071, -0.7071, 0.7071], atol=1e-3)
    off = cfg_lib.apply_overrides(c, ["grpo.mask_truncated_completions=false"])
    np.testing.assert_array_equal(rollout.update_inputs(off, gen, valid, s.eos_ids)[1], mask)


def test_long_prompts_are_dropped_at_load_and_counted(tmp_path):
    import json

    rows = [{"question": f"What is {a} plus {a}?", "answer": f"#### {2 * a}"} for a in range(30)]
    rows[7]["question"] = "Long " * 40 + "question?"
    test = [{"question": f"What is {a} times 3?", "answer": f"#### {3 * a}"} for a in range(6)]
    test[2]["question"] = "Long " * 40 + "eval question?"
    for split, part in (("train", rows), ("test", test)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    c = cfg_lib.apply_overrides(cfg_lib.Config(), [
        "task.name=gsm8k", f"task.data_path={tmp_path}", "task.instruction=false", "task.eval_size=0",
        "sampling.max_prompt_length=64"])
    task = tasks.from_config(cfg_lib.validate(c))
    tokenizer = tok_lib.char_tokenizer(tok_lib.CHAR_ALPHABET)
    task, counts = tasks.fit_prompts(task, tokenizer, c)
    assert counts == {"prompts_dropped_train": 1, "prompts_dropped_eval": 1}
    assert len(task.train_records) == 29 and len(task.eval_examples) == 5
    assert all(len(task.train_example(i).prompt) <= 64 for i in range(100))
    # A generated task whose prompts cannot fit is refused before any work, naming the key.
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["sampling.max_prompt_length=8"])
    with pytest.raises(cfg_lib.ConfigError, match=r"`sampling.max_prompt_length` = 8 .*up to \d+ tokens"):
        tasks.fit_prompts(tasks.from_config(c), tokenizer, c)


def test_dynamic_sampling_filters_on_accuracy_not_on_shaping_terms():
    # Every completion is correct; only a shaping reward (format, weight 0.1) differs within groups.
    # Filtering on the total reward kept these groups, and group-std scaling then turned the shaping
    # noise into full-size advantages (16 correct completions, one a token into the overlong window:
    # +0.095 / -1.421). DAPO and verl filter on accuracy: no group has a signal, none is kept.
    s = _setup("grpo.dynamic_sampling=true", "grpo.dynamic_sampling_max_rounds=1", "rewards.weights.format=0.1")
    shaping = lambda c, e: zlib.crc32(c.encode()) % 1000 / 1000  # noqa: E731
    s = s._replace(verifiers={"correctness": lambda c, e: 1.0, "format": shaping})
    gen, valid, metrics = rollout.collect(s, s.params, 0, _keys())
    assert metrics["dynamic_kept_fraction"] == 0.0 and metrics["zero_std_fraction"] == 1.0
    assert valid.tolist() == [0.0] * len(valid)  # all fill: nothing to learn from this step
    advantages, loss_mask, _ = rollout.update_inputs(s.config, gen, valid, s.eos_ids)
    assert np.all(advantages == 0) and np.all(loss_mask == 0)
    # The old behaviour stays available by name: the total reward differs, so every group is kept.
    c = cfg_lib.apply_overrides(s.config, ["grpo.dynamic_sampling_metric=reward"])
    _, valid, metrics = rollout.collect(s._replace(config=c), s.params, 0, _keys())
    assert metrics["dynamic_kept_fraction"] == 1.0 and valid.tolist() == [1.0] * len(valid)


def test_dynamic_sampling_metric_must_name_a_weighted_reward():
    for ok in ("correctness", "reward"):
        _setup("grpo.dynamic_sampling=true", f"grpo.dynamic_sampling_metric={ok}")
    with pytest.raises(cfg_lib.ConfigError, match="grpo.dynamic_sampling_metric"):
        _setup("grpo.dynamic_sampling=true", "grpo.dynamic_sampling_metric=format")  # format weight 0 here
