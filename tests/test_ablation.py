"""grpo_jax.ablation: the shared warm start is computed once and restored bit-identically, keyed by
exactly what SFT depends on; the plotting helpers' arithmetic."""
import jax
import numpy as np
import pytest

from grpo_jax import ablation, sweep
from grpo_jax.config import Config, ConfigError


def _config(**sft):
    c = Config()
    m = c.model
    m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate_size = 32, 1, 2, 1, 16, 64
    c.task.instruction = False
    c.task.eval_size, c.sft.validation_size = 8, 8
    c.sampling.max_prompt_length, c.sampling.max_new_tokens = 16, 24
    c.sft.steps, c.sft.batch_size, c.sft.learning_rate = 3, 8, 1e-3
    for k, v in sft.items():
        setattr(c.sft, k, v)
    return c


def test_warm_start_runs_sft_once_then_restores_it(tmp_path):
    logs = []
    first = ablation.warm_start(_config(), tmp_path, log=logs.append)
    assert not first.restored and first.sft_steps == 3
    second = ablation.warm_start(_config(), tmp_path, log=logs.append)
    assert second.restored and second.sft_steps == 3 and "restored" in logs[-1]
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical
    # SFT really ran: the params moved away from the random init.
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(first.setup.params))]
    assert max(moved) > 1e-4
    # A different SFT setting is a different warm start; a GRPO-only setting is not.
    other = ablation.warm_start(_config(steps=4), tmp_path, log=logs.append)
    assert not other.restored and other.sft_steps == 4
    grpo_only = _config()
    grpo_only.grpo.beta, grpo_only.optim.learning_rate = 0.0, 1.0
    assert ablation.sft_key(grpo_only) == ablation.sft_key(_config()) != ablation.sft_key(_config(steps=4))


def test_warm_start_reward_fn_and_prompt_batches(tmp_path):
    start = ablation.warm_start(_config(), tmp_path, log=lambda _: None)
    prompts = ablation.prompt_batches(start, 4)
    batch = prompts(2)
    examples = [start.setup.task.train_example(i) for i in range(8, 12)]
    want = sweep.encode_batch(start.setup.tokenizer, examples, max_prompt_length=16, prompt_fn=start.setup.task.prompt)
    for got, exp in zip(batch, want):
        np.testing.assert_array_equal(got, exp)
    # The JAX verifier scores the gold-formatted completion 1 and a wrong one 0.
    from grpo_jax.tasks.prompts import format_target
    tok, e = start.setup.tokenizer, examples[0]
    texts = [format_target(e.meta["reasoning"], e.answer, style="reasoning"),
             format_target(e.meta["reasoning"], str(int(e.answer) + 1), style="reasoning")]
    enc = [tok(t, add_special_tokens=False)["input_ids"] + [start.eos_id] for t in texts]
    width = max(map(len, enc))
    tokens = np.array([x + [start.eos_id] * (width - len(x)) for x in enc])
    mask = np.array([[1] * len(x) + [0] * (width - len(x)) for x in enc])
    answers, answer_mask = sweep.encode_answers(tok, [e.answer] * 2, max_length=8)
    np.testing.assert_array_equal(np.asarray(start.reward_fn(tokens, mask, answers, answer_mask)), [1.0, 0.0])
    accuracy = ablation.held_out_accuracy(start, sweep.stack(start.params, 2), size=4)
    assert accuracy.shape == (2,) and accuracy[0] == accuracy[1]  # same params, same greedy answers


def test_warm_start_needs_the_jax_verifier(tmp_path):
    c = _config()
    c.task.name = "countdown"
    with pytest.raises(ConfigError, match="task.name"):
        ablation.warm_start(c, tmp_path)


def test_smooth_and_grouped_curves():
    np.testing.assert_allclose(ablation.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(ablation.smooth(np.array([[1.0], [3.0], [8.0]]), 3), [[1.0], [2.0], [4.0]])
    np.testing.assert_allclose(ablation.smooth(np.array([1.0, 3.0]), 1), [1.0, 3.0])
    history = [{"r": np.array([0.0, 2.0, 5.0])}, {"r": np.array([2.0, 4.0, 5.0])}]
    fig = ablation.plot_curves(history, ["a", "a'", "b"], ["r"], "t", groups=[0, 0, 1])
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["a", "b"]
    np.testing.assert_allclose(lines[0].get_ydata(), [1.0, 3.0])  # seeds averaged
    np.testing.assert_allclose(lines[1].get_ydata(), [5.0, 5.0])
