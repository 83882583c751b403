"""model.attention at scale: "auto" picks the backend's kernel (splash on TPU, cudnn on a GPU in bf16,
xla elsewhere), a kernel on another backend is refused naming the key before any work (the plan
checks the TARGET's backend), and the splash kernel runs the shared-prefix forward (train.shared_prefix
no longer forces XLA attention)."""
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax import build, plan, sharding
from grpo_jax import config as cfg_lib
from grpo_jax import model as model_lib
from grpo_jax import train_step as ts


def test_auto_resolves_to_the_backends_kernel():
    resolve = model_lib.resolve_attention
    assert resolve("auto", platform="tpu", dtype="float32") == "splash"
    assert resolve("auto", platform="gpu", dtype="bfloat16") == "cudnn"
    assert resolve("auto", platform="gpu", dtype="float32") == "xla"  # cuDNN takes no f32
    assert resolve("auto", platform="cpu", dtype="bfloat16") == "xla"
    assert resolve("splash_interpret", platform="cpu", dtype="float32") == "splash_interpret"
    config = cfg_lib.load_config("experiments/quickstart.py", ["model.attention=auto"])
    from grpo_jax import weights
    assert weights.run_options(config.model)["attention"] == "xla"  # this CPU's


@pytest.mark.parametrize("attention, dtype, platform, ok", [
    ("splash", "float32", "cpu", False), ("splash", "bfloat16", "gpu", False), ("splash", "float32", "tpu", True),
    ("cudnn", "bfloat16", "tpu", False), ("cudnn", "bfloat16", "cpu", False), ("cudnn", "bfloat16", "gpu", True),
    ("auto", "float32", "cpu", True), ("auto", "bfloat16", "tpu", True), ("xla", "float32", "tpu", True),
    ("splash_interpret", "float32", "cpu", True),
])
def test_kernel_on_the_wrong_backend_is_refused(attention, dtype, platform, ok):
    config = cfg_lib.apply_overrides(cfg_lib.Config(), [f"model.attention={attention}", f"model.dtype={dtype}"])
    cfg_lib.validate(config)  # without a platform: any value of the set
    if ok:
        cfg_lib.validate(config, platform=platform)
    else:
        with pytest.raises(cfg_lib.ConfigError, match=rf"`model\.attention` = '{attention}'.*compiles for {platform}"):
            cfg_lib.validate(config, platform=platform)


def test_train_refuses_a_tpu_kernel_on_this_cpu_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(build.tasks_lib, "from_config", lambda c: pytest.fail("built the task"))
    config = cfg_lib.load_config("experiments/quickstart.py", ["model.attention=splash"])
    with pytest.raises(cfg_lib.ConfigError, match=r"`model\.attention`"):
        build.setup(config, tmp_path)


def test_plan_checks_the_targets_backend(capsys):
    """The plan runs on a CPU but compiles for a TPU: "auto" is splash there, cudnn is refused (no
    libtpu needed: the check comes before the topology is compiled for)."""
    config = cfg_lib.load_config("experiments/quickstart.py", ["model.attention=auto"])
    tpu = plan.Topology("v5e-8", "v5e", [None] * 8, 1, 15.75)
    assert plan.target_config(config, tpu).model.attention == "splash"
    assert plan.target_config(config, plan.get_topology("cpu")).model.attention == "xla"
    cudnn = cfg_lib.load_config("experiments/quickstart.py", ["model.attention=cudnn", "model.dtype=bfloat16"])
    with pytest.raises(cfg_lib.ConfigError, match=r"`model\.attention` = 'cudnn'.*compiles for tpu"):
        plan.target_config(cudnn, tpu)
    assert plan.main(["--config", "experiments/quickstart.py", "--config.model.attention=splash",
                      "--topology", "cpu"]) == 2
    assert "model.attention" in capsys.readouterr().err


# ------------------------------------------------------------------ splash in the shared-prefix forward
# One layer, 2 query heads sharing 1 KV head: the Pallas interpreter runs every kernel tile in Python.
CFG = model_lib.ModelConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                            head_dim=8, intermediate_size=32, attention_bias=True)
SPLASH = dataclasses.replace(CFG, attention="splash_interpret")  # the TPU kernel, in the Pallas interpreter
B, G, P, T = 2, 2, 5, 7


def test_splash_shared_prefix_equals_xla_values_and_gradients():
    """The shared-prefix forward with the splash kernel (prompts through `attention.attend`, completions
    through `attend_after_prefix`: a causal mask offset by the prompt, its pads masked) gives our XLA
    attention's hidden states and gradients, and the train step shares the prompt with it (the default
    train.shared_prefix no longer needs model.attention=xla)."""
    rng = np.random.default_rng(0)
    pmask = jnp.asarray((np.arange(P)[None] >= np.array([[0], [3]])).astype(np.int32))  # full, and 2 tokens
    prompts = jnp.where(pmask == 1, jnp.asarray(rng.integers(1, 40, (B, P)), jnp.int32), 0)
    completions = jnp.asarray(rng.integers(1, 40, (B * G, T)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(B * G, T, CFG.hidden_size)), jnp.float32)
    params = model_lib.init_params(CFG, jax.random.key(0))

    def loss(config, params):
        hp, hc = model_lib.grouped_hidden_states(config, params, prompts, pmask, completions, G)
        return jnp.sum(hc * weights) + jnp.sum(jnp.sin(hp) * pmask[..., None]), (hp, hc)

    out = {name: jax.jit(jax.value_and_grad(functools.partial(loss, config), has_aux=True))(params)
           for name, config in (("xla", CFG), ("splash", SPLASH))}
    (v_x, (hp_x, hc_x)), g_x = out["xla"]
    (v_s, (hp_s, hc_s)), g_s = out["splash"]
    real = np.asarray(pmask, bool)  # pad prompt rows are never read
    np.testing.assert_allclose(np.asarray(hp_s)[real], np.asarray(hp_x)[real], atol=2e-5)
    np.testing.assert_allclose(hc_s, hc_x, atol=2e-5)
    np.testing.assert_allclose(v_s, v_x, rtol=1e-5)
    chex.assert_trees_all_close(g_s, g_x, atol=5e-5, rtol=1e-4)
    for config, share in ((SPLASH, G), (dataclasses.replace(CFG, attention="cudnn", dtype="bfloat16"), 1)):
        step = ts.build_train_step(config, optax.sgd(0.1), shared_prefix=True, group_size=G)
        assert step.shared_group_size == share  # cudnn: its masks cannot express the prompt keys


def test_splash_pads_a_batch_that_does_not_divide_the_mesh():
    """Under the trainer's mesh the kernel runs in shard_map over the batch axes; 2 rows (a chunk's
    prompts) on a data=4 mesh are padded to 4 all-pad rows, cut off after: XLA attention's numbers."""
    mesh = sharding.make_mesh(data=4, fsdp=1, devices=jax.devices()[:4])
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(2, P, 2, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, P, 1, 8)), jnp.float32) for _ in range(2))
    mask = jnp.asarray((np.arange(P)[None] >= np.array([[0], [3]])).astype(np.int32))
    from grpo_jax import attention
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    args = jax.device_put((q, k, v, mask), replicated)
    got = jax.jit(sharding.under_mesh(lambda *a: attention.attend("splash", *a, interpret=True), mesh))(*args)
    want = attention.attend("dot_product_xla", q, k, v, mask)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
