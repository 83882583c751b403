"""Scale switches that must not change a number: layers under scan, rematerialisation, the attention
kernel behind model.attention, and a train step whose program does not grow with mu."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import optax
import pytest

from grpo_jax import config as cfg_lib, model as model_lib, train_step as ts

CONFIG = model_lib.ModelConfig(vocab_size=61, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                               head_dim=8, intermediate_size=48, attention_bias=True)
TOKENS = jax.random.randint(jax.random.key(1), (3, 9), 0, 61)
MASK = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9, [0] * 8 + [1]])  # left padding, one 1-token row


def _loss(config):
    def loss(params):  # a loss that reads every logit of the real rows
        logits = model_lib.apply(config, params, TOKENS, attention_mask=MASK)
        return jnp.sum(jnp.sin(logits) * MASK[..., None])
    return loss


@pytest.fixture(scope="module")
def params():
    return model_lib.init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def reference(params):
    return jax.jit(jax.value_and_grad(_loss(CONFIG)))(params)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("remat", list(model_lib.REMAT_POLICIES))
def test_scan_and_remat_give_the_same_loss_and_gradients(params, reference, scan, remat):
    config = dataclasses.replace(CONFIG, scan_layers=scan, remat=remat)
    value, grads = jax.jit(jax.value_and_grad(_loss(config)))(params)
    ref_value, ref_grads = reference
    assert jnp.allclose(value, ref_value, rtol=1e-6, atol=1e-5)
    # Same tree (per-layer list, not stacked) and the same numbers: layer order and casts intact.
    jax.tree.map(lambda a, b: np_close(a, b), grads, ref_grads)


def np_close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert jnp.allclose(a, b, rtol=1e-5, atol=1e-5), float(jnp.max(jnp.abs(a - b)))


def test_scan_matches_in_bf16_compute(params):
    """The stacked copy is cast to the compute dtype before stacking: same numbers as the per-layer casts."""
    bf16 = dataclasses.replace(CONFIG, dtype="bfloat16")
    out = [model_lib.apply(dataclasses.replace(bf16, scan_layers=s), params, TOKENS, attention_mask=MASK)
           for s in (False, True)]
    assert jnp.allclose(out[0], out[1], atol=2e-2)
    assert model_lib.stack_layers(bf16, params["layers"])["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16


def _dots(lowered_text: str) -> int:
    return lowered_text.count("dot_general")  # StableHLO matmuls in the lowered program


def test_scan_compiles_one_layer_whatever_the_depth(params):
    """Under scan the program holds one layer body; unrolled it holds num_layers copies."""
    def count(num_layers, scan):
        config = dataclasses.replace(CONFIG, num_layers=num_layers, scan_layers=scan, remat="full")
        p = jax.eval_shape(lambda k: model_lib.init_params(config, k), jax.random.key(0))
        return _dots(jax.jit(jax.grad(_loss(config))).lower(p).as_text())
    assert count(2, True) == count(6, True)
    assert count(6, False) > count(2, False)


def test_remat_full_lowers_the_temporaries():
    """Compiled memory analysis (deterministic): keeping only layer inputs needs less than keeping all."""
    config = dataclasses.replace(CONFIG, num_layers=4, hidden_size=64, intermediate_size=256)
    tokens = jnp.zeros((8, 128), jnp.int32)
    p = jax.eval_shape(lambda k: model_lib.init_params(config, k), jax.random.key(0))

    def temp(remat):
        c = dataclasses.replace(config, remat=remat, scan_layers=True)
        loss = lambda q: jnp.sum(model_lib.hidden_states(c, q, tokens) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(p).compile().memory_analysis().temp_size_in_bytes
    assert temp("full") < 0.6 * temp("none")


def test_splash_attention_in_the_model_equals_ours(params):
    """The splash kernel in the model (model.attention="splash_interpret": the Pallas interpreter, which
    runs it on CPU) gives our numbers."""
    splash = dataclasses.replace(CONFIG, attention="splash_interpret")
    got = model_lib.apply(splash, params, TOKENS, attention_mask=MASK)
    want = model_lib.apply(CONFIG, params, TOKENS, attention_mask=MASK)
    real = MASK.astype(bool)
    assert jnp.allclose(got[real], want[real], rtol=1e-5, atol=1e-5)
    g_got = jax.grad(_loss(dataclasses.replace(splash, scan_layers=True, remat="full")))(params)
    g_want = jax.grad(_loss(CONFIG))(params)
    jax.tree.map(np_close, g_got, g_want)


def test_mu_iterations_do_not_multiply_the_program(params):
    """Passes 2..mu run under one scan: the compiled step has as many dots at mu = 2 as at mu = 4."""
    optimizer = optax.adam(1e-3)
    n, p_len, t_len = 4, 5, 6

    def count(mu, k=1):
        step = ts.build_train_step(CONFIG, optimizer, num_iterations=mu, steps_per_generation=k,
                                   use_reference=False)
        state = ts.TrainState(jnp.int32(0), params, optimizer.init(params))
        batch = ts.Batch(jnp.ones((n, p_len), jnp.int32), jnp.ones((n, p_len), jnp.int32),
                         jnp.ones((n, t_len), jnp.int32), jnp.ones((n, t_len), jnp.float32), jnp.ones((n,)))
        hp = ts.HParams(*([jnp.float32(0.2)] * 4))
        return _dots(jax.jit(step).lower(state, None, batch, hp).as_text())
    assert count(2) == count(4)
    assert count(2, k=2) == count(3, k=2)


@pytest.mark.parametrize("override, key", [("model.remat=some", "model.remat"),
                                           ("model.attention=flash", "model.attention"),
                                           ("model.attention=cudnn", "model.attention")])
def test_bad_scale_switches_are_config_errors(override, key):
    with pytest.raises(cfg_lib.ConfigError, match=re.escape(key)):
        cfg_lib.load_config("experiments/quickstart.py", [override])


def test_scanned_model_samples_in_one_decode_loop_with_the_same_tokens(params):
    """scan_layers: one decode segment (one compiled loop of the layers instead of up to four); the
    tokens equal the segmented sampler's and the log-probs agree to f32 round-off."""
    from grpo_jax import sampling
    scanned = dataclasses.replace(CONFIG, scan_layers=True)
    prompts, mask = TOKENS[:2], MASK[:2]
    args = (prompts, mask, jax.random.key(3))
    kw = dict(max_new_tokens=130, temperature=1.0, eos_id=60)
    segmented = sampling.sample(CONFIG, params, *args, **kw)
    one = sampling.sample(scanned, params, *args, **kw)
    assert (segmented.tokens == one.tokens).all() and (segmented.mask == one.mask).all()
    assert jnp.allclose(segmented.logps, one.logps, atol=1e-5)

    def loops(config):
        return sampling._sample_jit.lower(config, params, *args, jnp.float32(1.0), jnp.array([60]),
                                          max_new_tokens=130, top_k=0, top_p=1.0,
                                          prompt_sharding=None).as_text().count("stablehlo.while")
    assert loops(CONFIG) - loops(scanned) == 1  # 130 tokens: two decode segments, or one
