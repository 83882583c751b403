"""Parity of `grpo_jax.losses` with TRL 1.16's own loss code, on random inputs.

What is compared. TRL's `GRPOTrainer._compute_loss` is called as an unbound function on a stub
`self` (a SimpleNamespace holding exactly the attributes it reads: loss_type, epsilon_low /
epsilon_high, beta, importance_sampling_level, args.delta, args.sapo_temperature_pos / _neg,
args.vespo_*, top_entropy_quantile, entropy_coef, current_gradient_accumulation_steps,
args.steps_per_generation, max_completion_length, a one-process accelerator whose gather / reduce /
pad_across_processes are the identity, ...), with TRL's real `get_high_entropy_mask` (bound to the
stub) and `get_gamma_weights`. The model forward `_get_per_token_logps_and_entropies` is replaced by
one returning our random log-probs and entropies as float64 leaf tensors, so torch autograd gives
TRL's gradient of its loss w.r.t. them. The same numpy arrays (float32 values) go to
`grpo_loss` in float32 and jax.grad gives ours; the two must agree to float32 rounding (rtol 2e-5;
gradients also atol 1e-6 of their largest entry).

  test_single_batch       every loss_type x importance_level ("token", "sequence"), beta 0 and 0.04,
                          delta None and 1.5 (clipped types), epsilon_high 0.28, the entropy mask
                          (top_entropy_quantile 0.2) and bonus (entropy_coef 0.01): loss and gradient
                          w.r.t. logps (and w.r.t. entropies where the bonus is on). One batch = one
                          TRL micro-batch with no accumulation (current_gradient_accumulation_steps =
                          steps_per_generation = 1, num_items_in_batch = the batch's tokens).
  test_single_batch_metrics  the same cases: the metrics TRL logs (kl, clip ratios).
  test_accumulation       a generation batch of K optimizer steps x M accumulated chunks of N rows,
                          TRL's K*M micro-batches (steps_per_generation = K*M, accumulation M,
                          num_items_in_batch = the whole generation batch's tokens), K in (1, 2), M in
                          (1, 2, 4): each optimizer step's summed gradient against sum_m
                          loss_weights[k, m] * grad grpo_loss(chunk k, m) (`accumulation_weights`).
                          bnpo and the entropy bonus match at M = 1 only, by design (their docstrings).
                          mu > 1 (num_iterations) reuses the same inputs each pass: nothing new here.
  test_kl_estimators      `kl_estimate` k1 / k2 / k3 against hand formulas, and TRL's KL is k3.

The random batch (N = 8, T = 12): ragged masks with one row of a single token, old_logps = logps +
per-token noise (scale 0.3) + a per-row offset, so ratios leave the clip range on both sides at
the token and at the sequence level (asserted in test_inputs_exercise_every_branch), advantages of
both signs, continuous entropies (no ties at the quantile).
"""

import functools
import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests run TRL's torch loss code (the `test` extra)")
grpo_trainer = pytest.importorskip(
    "trl.trainer.grpo_trainer", reason="parity with TRL needs trl==1.16.0 (the `test` extra)")
GRPOTrainer = grpo_trainer.GRPOTrainer

from grpo_jax.losses import (CLIPPED_LOSS_TYPES, LOSS_TYPES, accumulation_weights, grpo_loss,  # noqa: E402
                             kl_estimate)

N, T = 8, 12
EPSILON = 0.2
CISPO_MAX_WEIGHT = 1.2  # low enough that TRL's and our stop-gradient clamp is active on these ratios
SAPO_TEMPERATURES = (1.0, 1.05)
VESPO_PARAMS = (2.0, 3.0, 3.0, 2.0)  # (k_pos, lambda_pos, k_neg, lambda_neg)
RTOL = 2e-5


def make_batch(n, t, seed):
    """float32 numpy arrays: logps, old, ref, entropies [n, t], advantages [n], mask [n, t]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, size=n)
    lengths[1] = 1  # a nearly empty row
    lengths[-1] = t  # a full one
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    logps = -rng.exponential(1.0, size=(n, t))
    old = logps + 0.3 * rng.standard_normal((n, t)) + 0.3 * rng.standard_normal((n, 1))
    ref = logps + 0.2 * rng.standard_normal((n, t))
    advantages = rng.standard_normal(n)
    advantages[:2] = [1.3, -0.7]  # both signs whatever the seed
    entropies = rng.uniform(0.05, 3.0, size=(n, t))
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return f32(logps), f32(old), f32(ref), f32(entropies), f32(advantages), mask


BATCH = make_batch(N, T, seed=0)


# --------------------------------------------------------------------------------------- TRL side

class _Accelerator:
    """One process: every collective is the identity (reduce's sum over one process)."""
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def trl_loss(batch, *, loss_type, importance_level="token", epsilon=EPSILON, epsilon_high=None,
             beta=0.0, delta=None, entropy_coef=0.0, top_entropy_quantile=1.0, accumulation_steps=1,
             steps_per_generation=1, num_items_in_batch=None):
    """TRL's `_compute_loss` on `batch` -> (loss, grad w.r.t. logps, grad w.r.t. entropies, metrics),
    all float64 numpy (metrics: the last value TRL logged under each name)."""
    logps_np, old, ref, entropies_np, advantages, mask = batch
    n, t = logps_np.shape
    if loss_type == "cispo":
        trl_epsilon_high = CISPO_MAX_WEIGHT
    else:
        trl_epsilon_high = epsilon if epsilon_high is None else epsilon_high
    args = types.SimpleNamespace(
        delta=delta, use_bias_correction_kl=False, steps_per_generation=steps_per_generation,
        sapo_temperature_pos=SAPO_TEMPERATURES[0], sapo_temperature_neg=SAPO_TEMPERATURES[1],
        vespo_k_pos=VESPO_PARAMS[0], vespo_lambda_pos=VESPO_PARAMS[1],
        vespo_k_neg=VESPO_PARAMS[2], vespo_lambda_neg=VESPO_PARAMS[3])
    logps = torch.tensor(logps_np, dtype=torch.float64, requires_grad=True)
    entropies = torch.tensor(entropies_np, dtype=torch.float64, requires_grad=True)
    stub = types.SimpleNamespace(
        args=args, accelerator=_Accelerator(), model=types.SimpleNamespace(training=True),
        loss_type=loss_type, importance_sampling_level=importance_level, beta=beta,
        epsilon_low=epsilon, epsilon_high=trl_epsilon_high, top_entropy_quantile=top_entropy_quantile,
        max_completion_length=t, current_gradient_accumulation_steps=accumulation_steps,
        aux_loss_enabled=False, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False,
        _entropy_bonus_enabled=entropy_coef != 0.0, use_adaptive_entropy=False, entropy_coef=entropy_coef,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, entropies, None),
        get_gamma_weights=GRPOTrainer.get_gamma_weights,  # a staticmethod: no binding
    )
    stub.get_high_entropy_mask = functools.partial(GRPOTrainer.get_high_entropy_mask, stub)
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    if num_items_in_batch is None:
        num_items_in_batch = mask.sum()
    inputs = {
        "prompt_ids": torch.zeros((n, 1), dtype=torch.long), "prompt_mask": torch.ones((n, 1), dtype=torch.long),
        "completion_ids": torch.zeros((n, t), dtype=torch.long), "completion_mask": f64(mask),
        "advantages": f64(advantages), "old_per_token_logps": f64(old), "ref_per_token_logps": f64(ref),
        "num_items_in_batch": f64(num_items_in_batch),
    }
    loss = GRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    grad_entropies = np.zeros_like(entropies_np, np.float64) if entropies.grad is None else entropies.grad.numpy()
    metrics = {k: v[-1] for k, v in stub._metrics["train"].items()}
    return float(loss.detach()), logps.grad.numpy(), grad_entropies, metrics


# --------------------------------------------------------------------------------------- our side

def our_loss(batch, **kw):
    """grpo_loss on `batch` (float32) -> (loss, grad w.r.t. logps, grad w.r.t. entropies, metrics)."""
    logps, old, ref, entropies, advantages, mask = (jnp.asarray(x) for x in batch)
    kw = {"cispo_max_weight": CISPO_MAX_WEIGHT, "sapo_temperatures": SAPO_TEMPERATURES,
          "vespo_params": VESPO_PARAMS, "max_completion_length": logps.shape[1], **kw}

    def f(lp, ent):
        return grpo_loss(lp, old, ref, advantages, mask, entropies=ent, per_row=True, **kw)

    (loss, metrics), (g_lp, g_ent) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(logps, entropies)
    return float(loss), np.asarray(g_lp), np.asarray(g_ent), {k: np.asarray(v) for k, v in metrics.items()}


def assert_grad_close(ours, theirs, what):
    scale = max(float(np.abs(theirs).max()), 1e-30)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=1e-6 * scale, err_msg=what)


# --------------------------------------------------------------------------------------- single batch

def _cases():
    for loss_type in LOSS_TYPES:
        for level in ("token", "sequence"):
            for beta in (0.0, 0.04):
                for delta in ((None, 1.5) if loss_type in CLIPPED_LOSS_TYPES else (None,)):
                    yield pytest.param(loss_type, level, dict(beta=beta, delta=delta),
                                       id=f"{loss_type}-{level}-beta{beta}-delta{delta}")
            if loss_type in CLIPPED_LOSS_TYPES:
                yield pytest.param(loss_type, level, dict(beta=0.04, epsilon_high=0.28),
                                   id=f"{loss_type}-{level}-eps_high0.28")
        # The entropy mask and bonus (token level; the mask does not depend on the level).
        yield pytest.param(loss_type, "token", dict(beta=0.04, top_entropy_quantile=0.2, entropy_coef=0.01),
                           id=f"{loss_type}-top_entropy0.2-entropy_coef0.01")
    yield pytest.param("grpo", "sequence", dict(beta=0.04, top_entropy_quantile=0.2),
                       id="grpo-sequence-top_entropy0.2")
    yield pytest.param("grpo", "token", dict(beta=0.0, entropy_coef=0.01), id="grpo-entropy_coef0.01")


CASES = list(_cases())


@functools.lru_cache(maxsize=None)
def _both(loss_type, level, frozen_kw):
    """(TRL's, ours) for one case, computed once for the loss and the metrics tests."""
    kw = dict(frozen_kw)
    return (trl_loss(BATCH, loss_type=loss_type, importance_level=level, **kw),
            our_loss(BATCH, loss_type=loss_type, importance_level=level, **kw))


@pytest.mark.parametrize("loss_type, level, kw", CASES)
def test_single_batch(loss_type, level, kw):
    """One batch, no accumulation: the loss and its gradients agree."""
    (t_loss, t_glp, t_gent, _), (o_loss, o_glp, o_gent, _) = _both(loss_type, level, tuple(kw.items()))
    assert o_loss == pytest.approx(t_loss, rel=RTOL, abs=1e-7)
    assert np.abs(t_glp).max() > 0
    assert_grad_close(o_glp, t_glp, "d loss / d logps")
    if kw.get("entropy_coef"):
        assert np.abs(t_gent).max() > 0
    assert_grad_close(o_gent, t_gent, "d loss / d entropies")


@pytest.mark.parametrize("loss_type, level, kw", CASES)
def test_single_batch_metrics(loss_type, level, kw):
    """The metrics TRL logs: kl (a token mean), and for the clipped types its clip_ratio/low_mean,
    high_mean, region_mean (cispo: cispo_clip_ratio) against our clip_fraction_low / _high / clip_fraction.

    TRL's clip ratios are token means at importance_level="token" and, at "sequence" (one ratio per
    row), means over the rows: the fraction of completions clipped, each row counting once whatever
    its length (its `global_masked_mean` of a [B, 1] tensor). Ours stay token means at both levels
    (the share of the loss's tokens whose objective the clip changed: a long clipped row weighs more),
    so at "sequence" TRL's row fraction is compared with the rows our per-row counts mark as clipped.
    """
    (_, _, _, t_metrics), (_, _, _, o_metrics) = _both(loss_type, level, tuple(kw.items()))
    if kw.get("beta"):
        assert float(o_metrics["kl"]) == pytest.approx(t_metrics["kl"], rel=RTOL)
    if level == "sequence":
        if loss_type in CLIPPED_LOSS_TYPES:
            rows_clipped = float((o_metrics["clipped_tokens"] > 0).mean())
            assert rows_clipped == pytest.approx(t_metrics["clip_ratio/region_mean"], abs=1e-6)
        elif loss_type == "cispo":
            rows_clipped = float((o_metrics["clipped_tokens"] > 0).mean())
            assert rows_clipped == pytest.approx(t_metrics["cispo_clip_ratio"], abs=1e-6)
        return
    if loss_type in CLIPPED_LOSS_TYPES:
        for ours, theirs in (("clip_fraction_low", "clip_ratio/low_mean"),
                             ("clip_fraction_high", "clip_ratio/high_mean"),
                             ("clip_fraction", "clip_ratio/region_mean")):
            assert float(o_metrics[ours]) == pytest.approx(t_metrics[theirs], abs=1e-6), (ours, theirs)
    elif loss_type == "cispo":
        assert float(o_metrics["clip_fraction_high"]) == pytest.approx(t_metrics["cispo_clip_ratio"], abs=1e-6)


def test_inputs_exercise_every_branch():
    """The random batch reaches both clip sides, the delta cap and cispo's clamp at both levels, so
    the parity above is not parity on the unclipped branch only."""
    logps, old, _, _, advantages, mask = BATCH
    m = mask > 0
    token = np.exp(logps - old)
    sequence = np.broadcast_to(np.exp(((logps - old) * mask).sum(1) / mask.sum(1))[:, None], mask.shape)
    a = np.broadcast_to(advantages[:, None], mask.shape)
    for ratio in (token, sequence):
        assert ((ratio < 1 - EPSILON) & (a < 0) & m).any()
        assert ((ratio > 1 + EPSILON) & (a > 0) & m).any()
        assert ((ratio > 1.5) & (a < 0) & m).any()  # delta = 1.5 caps these
        assert ((ratio > CISPO_MAX_WEIGHT) & m).any()
        assert ((ratio > 1 + EPSILON) & (ratio < 1.28) & (a > 0) & m).any()  # epsilon_high 0.28 keeps these


# --------------------------------------------------------------------------------------- accumulation

# Every chunk has N rows, BATCH's shape (eager jax compiles each op once per shape): the generation
# batch of K optimizer steps x M chunks is the first N * K * M rows of ACC.
ACC = make_batch(8 * N, T, seed=1)  # a seed whose chunks differ in tokens within every step (51 to 65)


def _chunks(k_steps, m_chunks):
    """[k][m] -> the chunk's arrays: consecutive row blocks, as TRL splits its generation batch."""
    return [[tuple(x[(k * m_chunks + m) * N:(k * m_chunks + m + 1) * N] for x in ACC)
             for m in range(m_chunks)] for k in range(k_steps)]


def accumulated(loss_type, k_steps, m_chunks, entropy_coef=0.0):
    """Per optimizer step k: (TRL's summed micro-batch gradients, ours) w.r.t. logps and entropies,
    each [K, M * N, T]."""
    chunks = _chunks(k_steps, m_chunks)
    total_tokens = sum(c[-1].sum() for step in chunks for c in step)  # TRL's num_items_in_batch
    tokens = jnp.array([[c[-1].sum() for c in step] for step in chunks], jnp.float32)
    rows = jnp.array([[c[-1].shape[0] for c in step] for step in chunks], jnp.float32)
    weights, shares = (np.asarray(w) for w in accumulation_weights(loss_type, tokens, rows))
    theirs_lp, theirs_ent, ours_lp, ours_ent = [], [], [], []
    for k, step in enumerate(chunks):
        for m, chunk in enumerate(step):
            _, g_lp, g_ent, _ = trl_loss(chunk, loss_type=loss_type, beta=0.04, entropy_coef=entropy_coef,
                                         accumulation_steps=m_chunks, steps_per_generation=k_steps * m_chunks,
                                         num_items_in_batch=total_tokens)
            theirs_lp.append(g_lp)
            theirs_ent.append(g_ent)
            _, o_lp, _, _ = our_loss(chunk, loss_type=loss_type, beta=0.04)  # the chunk's loss, no bonus
            ours_lp.append(weights[k, m] * o_lp)
            # The step's entropy bonus: the chunk's token share x -coef x its masked mean entropy.
            chunk_mask = chunk[-1]
            ours_ent.append(shares[k, m] * -entropy_coef * chunk_mask / max(chunk_mask.sum(), 1.0))
    shape = (k_steps, m_chunks * N, T)
    return tuple(np.concatenate(g).reshape(shape) for g in (theirs_lp, ours_lp, theirs_ent, ours_ent))


def test_accumulation_chunks_differ_in_tokens():
    """The chunks of each optimizer step differ in tokens, so the bnpo and entropy-bonus checks at M > 1
    can tell a token-weighted mean of chunk means from a plain one."""
    for k_steps, m_chunks in ((1, 2), (1, 4), (2, 2), (2, 4)):
        tokens = [[c[-1].sum() for c in step] for step in _chunks(k_steps, m_chunks)]
        assert all(len(set(t)) > 1 for t in tokens), tokens


@pytest.mark.parametrize("k_steps", (1, 2))
@pytest.mark.parametrize("m_chunks", (1, 2, 4))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_accumulation(loss_type, k_steps, m_chunks):
    """Each optimizer step's gradient: TRL's sum of its M micro-batch gradients == ours.

    Except "bnpo" at M > 1, where the two differ by design: our bnpo is the token mean over the
    optimizer step (chunk weights tokens[k, m] / tokens of step k, so M changes nothing but memory);
    TRL's is the mean of the M micro-batch token means (each divided by its own tokens, then by
    M), which moves with how the step is split whenever the chunks' token counts differ (they do
    here: test_accumulation_chunks_differ_in_tokens).
    """
    theirs, ours, _, _ = accumulated(loss_type, k_steps, m_chunks)
    if loss_type == "bnpo" and m_chunks > 1:
        assert not np.allclose(ours, theirs, rtol=1e-3, atol=0)
        return
    assert_grad_close(ours, theirs, f"{loss_type}: step gradient, K = {k_steps}, M = {m_chunks}")


@pytest.mark.parametrize("k_steps", (1, 2))
@pytest.mark.parametrize("m_chunks", (1, 2))
def test_accumulation_entropy_bonus(k_steps, m_chunks):
    """The entropy bonus's gradient w.r.t. entropies per optimizer step.

    M = 1: equal. M > 1: ours weighs each chunk's mean entropy by its share of the step's tokens
    (the step's token mean, invariant to M); TRL divides each micro-batch's mean by M, so they differ
    when the chunks' token counts differ.
    """
    coef = 0.01
    theirs_lp, ours_lp, theirs, ours = accumulated("grpo", k_steps, m_chunks, entropy_coef=coef)
    assert_grad_close(ours_lp, theirs_lp, "d loss / d logps beside the bonus")
    if m_chunks == 1:
        assert_grad_close(ours, theirs, "d loss / d entropies")
    else:
        assert not np.allclose(ours, theirs, rtol=1e-3, atol=0)


# --------------------------------------------------------------------------------------- KL estimators

def test_kl_estimators():
    """kl_estimate against the hand formulas; k3 is TRL's per-token KL (its loss with A = 0 and
    beta = 1 under bnpo is the masked mean of it, as is its logged kl)."""
    logps, _, ref, _, _, mask = BATCH
    d = logps.astype(np.float64) - ref
    hand = {"k1": d, "k2": d * d / 2, "k3": np.exp(-d) + d - 1}
    for name, expected in hand.items():
        np.testing.assert_allclose(np.asarray(kl_estimate(jnp.asarray(logps), jnp.asarray(ref), name)),
                                   expected, rtol=1e-5, atol=1e-7, err_msg=name)
    assert (hand["k3"] >= 0).all() and (hand["k2"] >= 0).all() and (hand["k1"] < 0).any()

    zero_advantages = BATCH[:4] + (np.zeros(N, np.float32), mask)
    loss, _, _, metrics = trl_loss(zero_advantages, loss_type="bnpo", beta=1.0)
    k3_mean = (hand["k3"] * mask).sum() / mask.sum()
    assert loss == pytest.approx(k3_mean, rel=1e-12)
    assert metrics["kl"] == pytest.approx(k3_mean, rel=1e-12)
    # Our estimators plug into the loss the same way.
    for name, expected in hand.items():
        ours, _, _, ours_metrics = our_loss(zero_advantages, loss_type="bnpo", beta=1.0, kl_estimator=name)
        mean = (expected * mask).sum() / mask.sum()
        assert ours == pytest.approx(mean, rel=1e-5), name
        assert float(ours_metrics["kl"]) == pytest.approx(mean, rel=1e-5), name
