"""SFT warm start: batch encoding, the masked loss on hand-checkable numbers, learning on the
arithmetic task, sharded == single device, determinism."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import model as model_lib
from grpo_jax import sft
from grpo_jax import sharding
from grpo_jax import tokenizer as tokenizer_lib
from grpo_jax import train_step as ts
from grpo_jax.tasks import arithmetic
from grpo_jax.tasks import prompts

STYLE = "reasoning"
# Every character the prompt and target texts of the arithmetic task can contain (the format tags
# are single tokens of char_tokenizer anyway).
ALPHABET = "".join(sorted(set(prompts.format_prompt("What is 0123456789+-*?", style=STYLE)
                              + prompts.format_target("0123456789+-*=", "-0", style=STYLE))))
TOK = tokenizer_lib.char_tokenizer(ALPHABET)
V = len(TOK)
CFG = model_lib.ModelConfig(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=16, intermediate_size=128, tie_embeddings=True)
# 2-digit additions: every prompt has the same length; a couple of pad columns on the left.
P = len(TOK(prompts.format_prompt("What is 12+34?", style=STYLE))["input_ids"]) + 2
T = 24
SEQ = dict(max_prompt_length=P, max_target_length=T)
TRAIN = functools.partial(arithmetic.example, 0)
EVAL = [arithmetic.example(0, i, split="eval") for i in range(64)]


def mesh_of(data, fsdp):
    return sharding.make_mesh(data=data, fsdp=fsdp, devices=jax.devices()[: data * fsdp])


def arithmetic_batch(start, n):
    texts = [sft.sft_texts(TRAIN(i), style=STYLE) for i in range(start, start + n)]
    return sft.encode_sft_batch(TOK, [p for p, _ in texts], [t for _, t in texts], **SEQ)


def test_alphabet_covers_the_task():
    batch = arithmetic_batch(0, 32)
    assert TOK.unk_token_id not in batch.prompt_tokens and TOK.unk_token_id not in batch.target_tokens


def test_encode_sft_batch_layout():
    batch = sft.encode_sft_batch(TOK, ["What is 1+2?", "What is 10+20?"], ["3", "<answer>30"],
                                 max_prompt_length=16, max_target_length=5)
    pad, eos = TOK.pad_token_id, TOK.eos_token_id
    # Prompts: exactly encode_prompts (left-padded).
    ref_tokens, ref_mask = tokenizer_lib.encode_prompts(TOK, ["What is 1+2?", "What is 10+20?"],
                                                        max_length=16)
    np.testing.assert_array_equal(batch.prompt_tokens, ref_tokens)
    np.testing.assert_array_equal(batch.prompt_mask, ref_mask)
    # Targets: text ids, EOS, then right padding; the mask covers text + EOS.
    ids = lambda s: TOK(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    np.testing.assert_array_equal(batch.target_tokens, [ids("3") + [eos, pad, pad, pad],
                                                        ids("<answer>30") + [eos, pad]])
    np.testing.assert_array_equal(batch.target_mask, [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    assert batch.target_tokens.dtype == np.int32 and batch.target_mask.dtype == np.float32
    # Too long (3 characters + EOS > 3) is an error naming the example.
    with pytest.raises(ValueError, match="target 1 has 4 tokens"):
        sft.encode_sft_batch(TOK, ["a", "b"], ["12", "123"], max_prompt_length=4, max_target_length=3)
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        sft.encode_sft_batch(TOK, ["a", "b"], ["1"], max_prompt_length=4, max_target_length=3)


def test_sft_texts_with_and_without_reasoning():
    ex = TRAIN(0)
    prompt, target = sft.sft_texts(ex, style=STYLE)
    assert prompt == prompts.format_prompt(ex.prompt, style=STYLE)
    assert target == f"<reasoning>\n{ex.meta['reasoning']}\n</reasoning>\n<answer>\n{ex.answer}\n</answer>"
    bare = ex._replace(meta={"id": "x"})
    assert sft.sft_texts(bare, style=STYLE)[1] == prompts.format_target("", ex.answer, style=STYLE)


def test_uniform_logits_give_loss_log_v():
    # Zero final-norm scale -> every logit is 0 -> p = 1/V for every token: loss = log V exactly,
    # and argmax is id 0 (<pad>), never a target token: accuracy 0.
    params = model_lib.init_params(CFG, jax.random.key(0))
    params["norm"]["scale"] = jnp.zeros_like(params["norm"]["scale"])
    batch = arithmetic_batch(0, 4)
    loss, m = jax.jit(sft.sft_loss, static_argnums=0)(CFG, params, *batch)
    np.testing.assert_allclose(float(loss), math.log(V), rtol=1e-6)
    assert float(m["token_accuracy"]) == 0.0
    assert float(m["num_tokens"]) == batch.target_mask.sum()


def test_loss_equals_unpadded_next_token_nll():
    # Independent route: run each example UNPADDED (real prompt ids + real target ids + EOS, no
    # mask) and score target token j with the logit one position earlier, by hand. The three rows
    # have different prompt and target lengths (so different left and right padding in the batch)
    # but the same unpadded length 18, so one forward call scores them all.
    params = model_lib.init_params(CFG, jax.random.key(1))
    batch = sft.encode_sft_batch(TOK, ["What is 1+2?", "What is 10+20?", "What is 99+9?"],
                                 ["<answer>\n3\n</answer>", "30\n", "108\n"],
                                 max_prompt_length=P, max_target_length=T)
    loss, m = jax.jit(sft.sft_loss, static_argnums=0)(CFG, params, *batch)
    prompt_lens = batch.prompt_mask.sum(1)
    target_lens = batch.target_mask.sum(1).astype(int)
    seqs = np.stack([np.concatenate([pt[pm == 1], tt[tm == 1]]) for pt, pm, tt, tm in zip(*batch)])
    assert seqs.shape == (3, 18) and len(set(prompt_lens)) == 3 and len(set(target_lens)) == 3
    logits = jax.jit(model_lib.apply, static_argnums=0)(CFG, params, jnp.asarray(seqs))
    logits = np.asarray(logits, np.float64)  # [3, 18, V]
    nll, correct = [], []
    for row, n_prompt, n_target in zip(range(3), prompt_lens, target_lens):
        scoring = logits[row, n_prompt - 1: n_prompt - 1 + n_target]  # position k predicts token k + 1
        target = seqs[row, n_prompt:]
        logp = scoring - np.log(np.exp(scoring).sum(-1, keepdims=True))
        nll.extend(-logp[np.arange(n_target), target])
        correct.extend(scoring.argmax(-1) == target)
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)
    np.testing.assert_allclose(float(m["token_accuracy"]), np.mean(correct), atol=1e-6)
    assert float(m["num_tokens"]) == len(nll) == 6 + 4 + 5


def test_mask_excludes_target_padding_and_prompt_padding():
    params = model_lib.init_params(CFG, jax.random.key(2))
    batch = arithmetic_batch(0, 4)
    loss_fn = jax.jit(lambda *b: sft.sft_loss(CFG, params, *b)[0])
    base = float(loss_fn(*batch))
    pad_t = batch.target_mask == 0
    pad_p = batch.prompt_mask == 0
    assert pad_t.any() and pad_p.any()
    # Garbage in the padded target slots and in the left-padded prompt slots: loss unchanged.
    junk_t = np.where(pad_t, TOK.convert_tokens_to_ids("7"), batch.target_tokens)
    junk_p = np.where(pad_p, TOK.convert_tokens_to_ids("9"), batch.prompt_tokens)
    assert float(loss_fn(batch.prompt_tokens, batch.prompt_mask, junk_t, batch.target_mask)) == base
    np.testing.assert_allclose(float(loss_fn(junk_p, batch.prompt_mask, batch.target_tokens,
                                             batch.target_mask)), base, rtol=1e-6)
    # Control: changing one REAL target token does change the loss.
    real = batch.target_tokens.copy()
    real[0, 0] = TOK.convert_tokens_to_ids("7")
    assert abs(float(loss_fn(batch.prompt_tokens, batch.prompt_mask, real, batch.target_mask)) - base) > 1e-3


def one_step(mesh, batch):
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    opt = ts.make_optimizer(learning_rate=1e-2)
    state = ts.init_state(params, opt, mesh)
    state_sh = ts.state_shardings(mesh, opt, jax.eval_shape(lambda p: p, params))
    fn = sft.jit_sft_step(sft.build_sft_step(CFG, opt), mesh, state_sh)
    new_state, metrics = fn(state, jax.device_put(batch, sft.sft_batch_shardings(mesh)))
    assert state.params["embed_tokens"]["embedding"].is_deleted()  # donated
    return new_state, jax.device_get(metrics)


def test_sharded_4x2_equals_single_device():
    batch = arithmetic_batch(0, 16)
    s1, m1 = one_step(mesh_of(1, 1), batch)
    s8, m8 = one_step(mesh_of(4, 2), batch)
    assert set(m1) == {"loss", "token_accuracy", "num_tokens", "grad_norm"}
    for k in m1:
        np.testing.assert_allclose(m1[k], m8[k], atol=1e-4, err_msg=k)
    chex.assert_trees_all_close(s1.params, s8.params, atol=1e-4, rtol=1e-7)
    assert int(s8.step) == 1
    emb = s8.params["embed_tokens"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")  # [V, D]: D = 64 divides
    # The update moved the params (so the comparison above is not trivially of two inits).
    init = model_lib.init_params(CFG, jax.random.key(0))["embed_tokens"]["embedding"]
    assert np.abs(np.asarray(emb) - np.asarray(init)).max() > 1e-3


def train(mesh, steps, example_fn=TRAIN, log_fn=None, log_every=10):
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    out = sft.run_sft(CFG, params, TOK, example_fn, steps=steps, batch_size=16, learning_rate=3e-3,
                      warmup_steps=5, mesh=mesh, style=STYLE, log_every=log_every, log_fn=log_fn, **SEQ)
    return params, out


def test_sft_lowers_heldout_loss_on_arithmetic():
    # Measured: 3.89 (~ log V = 3.87) -> 1.40 after 40 steps of 16 examples; asserted drop: 1.0.
    mesh = mesh_of(1, 1)
    logs = []
    params, trained = train(mesh, steps=40, log_fn=lambda s, m: logs.append((s, m)))
    before = sft.sft_eval_loss(CFG, params, TOK, EVAL, style=STYLE, batch_size=32, **SEQ)
    after = sft.sft_eval_loss(CFG, trained, TOK, EVAL, style=STYLE, batch_size=32, **SEQ)
    train_losses = [(s, round(m["loss"], 3)) for s, m in logs]
    print(f"held-out loss {before:.3f} -> {after:.3f}; train losses {train_losses}")
    assert before == pytest.approx(math.log(V), rel=0.05)  # a fresh init is near uniform
    assert after < before - 1.0
    assert [s for s, _ in logs] == [10, 20, 30, 40]
    assert logs[-1][1]["loss"] < logs[0][1]["loss"]
    # Eval loss is a token-weighted mean: independent of the batch size (incl. a padded last batch).
    by_32 = sft.sft_eval_loss(CFG, trained, TOK, EVAL[:40], style=STYLE, batch_size=32, **SEQ)
    by_8 = sft.sft_eval_loss(CFG, trained, TOK, EVAL[:40], style=STYLE, batch_size=8, **SEQ)
    assert by_32 == pytest.approx(by_8, rel=1e-5)


def test_run_sft_is_deterministic_and_reads_example_fn_by_index():
    mesh = mesh_of(2, 1)
    seen, logged = [], []

    def recording(i):
        seen.append(i)
        return TRAIN(i)

    init, a = train(mesh, steps=3, example_fn=recording, log_every=2, log_fn=lambda s, m: logged.append(s))
    assert seen == list(range(48))  # batch i reads indices [16 i, 16 i + 16)
    assert logged == [2, 3]  # every log_every steps, and the last one
    _, b = train(mesh, steps=3)
    chex.assert_trees_all_equal(a, b)
    # Control: training moved every weight matrix; the caller's params were not consumed.
    for x, y in zip(jax.tree.leaves(init), jax.tree.leaves(a)):
        if x.ndim == 2:
            assert np.abs(np.asarray(x) - np.asarray(y)).max() > 1e-4
    assert a["embed_tokens"]["embedding"].sharding == init["embed_tokens"]["embedding"].sharding


def test_run_sft_rejects_batch_not_divisible_by_mesh():
    with pytest.raises(ValueError, match="batch_size=12 must be a positive multiple of the mesh's 8"):
        sft.run_sft(CFG, None, TOK, TRAIN, steps=1, batch_size=12, learning_rate=1e-3, mesh=mesh_of(4, 2),
                    **SEQ)


def test_chunked_lm_head_equals_one_chunk():
    # The loss, token accuracy and gradient through the chunked LM head (chunk_size=8 token rows: 2
    # positions of 4 rows per chunk, 12 chunks) equal the one-chunk computation.
    params = model_lib.init_params(CFG, jax.random.key(3))
    batch = arithmetic_batch(0, 4)

    def run(chunk_size):
        fn = jax.value_and_grad(lambda p: sft.sft_loss(CFG, p, *batch, chunk_size=chunk_size), has_aux=True)
        return jax.jit(fn)(params)

    (loss1, m1), g1 = run(None)
    (loss8, m8), g8 = run(8)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    assert float(m8["token_accuracy"]) == float(m1["token_accuracy"])
    chex.assert_trees_all_close(g8, g1, rtol=1e-5, atol=1e-7)
