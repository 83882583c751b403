"""The decode engine as a config switch (issue 28): sampling.engine / slots / block_size / cache_tokens
validated with errors naming the key, passed to every sampler call (training rollouts, eval), and
counted by the plan tool (the paged pool: token budget x per-token KV bytes, and the slots that fit).

The engine's own equality tests (slots, block sizes, preemption, meshes) are tests/test_continuous.py;
here: the wiring gives the same rollouts and eval completions with either engine, and actually runs
the continuous engine when asked (a spy counts its calls, so equal outputs cannot come from two
lockstep runs)."""
import types

import jax
import numpy as np
import pytest

from grpo_jax import ConfigError, build, continuous, evaluate, plan, rollout
from grpo_jax import config as cfg_lib
from grpo_jax.model import ModelConfig

from test_train import QUICKSTART, TINY


def _config(*overrides, devices=None):
    c = cfg_lib.apply_overrides(cfg_lib.Config(), list(overrides))
    return cfg_lib.validate(c, num_devices=devices)


# --- config -------------------------------------------------------------------------------------

def test_defaults_validate_and_the_engine_is_a_listed_choice():
    c = _config(devices=8)
    assert (c.sampling.engine, c.sampling.slots, c.sampling.block_size, c.sampling.cache_tokens) == (
        "lockstep", 0, 16, 0)
    _config("sampling.engine=continuous", devices=8)  # base's 64 new tokens: 4 blocks of 16
    assert cfg_lib.CHOICES["sampling.engine"] == ("lockstep", "continuous")
    assert "sampling.engine" in cfg_lib.help_text() and "sampling.cache_tokens" in cfg_lib.help_text()


@pytest.mark.parametrize("overrides, key, allowed", [
    (["sampling.engine=paged"], "sampling.engine", "one of ('lockstep', 'continuous')"),
    (["sampling.slots=-1"], "sampling.slots", ">= 0"),
    (["sampling.block_size=0"], "sampling.block_size", ">= 1"),
    (["sampling.cache_tokens=-16"], "sampling.cache_tokens", ">= 0"),
    # 64 new tokens are not whole blocks of 24
    (["sampling.engine=continuous", "sampling.block_size=24"], "sampling.block_size",
     "a divisor of sampling.max_new_tokens = 64"),
])
def test_bad_engine_keys_are_refused_naming_the_key(overrides, key, allowed):
    with pytest.raises(ConfigError) as error:
        _config(*overrides)
    assert f"config key `{key}`" in str(error.value) and allowed in str(error.value), str(error.value)


def test_a_block_size_that_does_not_divide_the_length_is_fine_for_lockstep():
    _config("sampling.max_new_tokens=3000")  # dr_grpo's length: 3000 % 16 = 8, but lockstep has no blocks


def test_cache_tokens_below_one_prompt_set_plus_one_completion_is_refused():
    """B = 4 prompts of P = 16 in blocks of 8 (2 each), T = 32, eval calls of 4 rows (4 prompts):
    the smallest pool is 8 * (1 + 4 * 2) + 32 = 104 tokens (scratch block, prompts, one completion)."""
    base = ["sampling.engine=continuous", "sampling.block_size=8", "sampling.max_prompt_length=16",
            "sampling.max_new_tokens=32", "train.prompts_per_step=4", "grpo.group_size=4",
            "train.eval_batch_size=4"]
    assert continuous.min_cache_tokens(4, 16, 32, 8) == 104
    _config(*base, "sampling.cache_tokens=104")
    _config(*base, "sampling.cache_tokens=0")  # 0 = the no-preemption default
    with pytest.raises(ConfigError, match=r"config key `sampling.cache_tokens` = 103 is invalid: must be 0 or >= 104"):
        _config(*base, "sampling.cache_tokens=103")
    # An eval call of 8 prompts (one per row) needs 8 * (1 + 8 * 2) + 32 = 168: the larger call counts.
    with pytest.raises(ConfigError, match=r"`sampling.cache_tokens` = 104 .* >= 168 .*an eval call holds 8 prompt"):
        _config(*base, "train.eval_batch_size=8", "sampling.cache_tokens=104")
    # Lockstep ignores the key (no pool): any budget >= 0 is accepted.
    _config(*[b for b in base if "engine" not in b], "sampling.cache_tokens=8")


def test_continuous_on_a_mesh_is_checked_per_device():
    """16 rows over 4 devices: 4 rows = one group per device, so each needs 8 * (1 + 1 * 2) + 32 = 56
    tokens; 104 covers the single-device count but not 4 x 56 = 224 over the mesh."""
    base = ["sampling.engine=continuous", "sampling.block_size=8", "sampling.max_prompt_length=16",
            "sampling.max_new_tokens=32", "train.prompts_per_step=4", "grpo.group_size=4",
            "train.eval_batch_size=4", "mesh.data=4", "mesh.fsdp=1"]
    _config(*base, "sampling.cache_tokens=224", "sampling.slots=8", devices=4)
    with pytest.raises(ConfigError, match=r"`sampling.cache_tokens` = 104 .*at least 4 x 56"):
        _config(*base, "sampling.cache_tokens=104", devices=4)
    with pytest.raises(ConfigError, match=r"`sampling.cache_tokens` = 226 .*a multiple of the mesh's 4"):
        _config(*base, "sampling.cache_tokens=226", devices=4)
    with pytest.raises(ConfigError, match=r"`sampling.slots` = 6 .*a multiple of the mesh's 4 devices"):
        _config(*base, "sampling.slots=6", devices=4)
    with pytest.raises(ConfigError, match=r"`sampling.weight_layout` = 'tensor' .*replicated with sampling.engine"):
        _config(*base, "sampling.weight_layout=tensor", "mesh.data=1", "mesh.fsdp=4", devices=4)
    _config(*base, "sampling.weight_layout=tensor", "mesh.data=1", "mesh.fsdp=1", devices=4)  # one device: no effect


# --- plan ---------------------------------------------------------------------------------------

MC = ModelConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                 intermediate_size=64)  # float32: 2 layers x (k, v) x 2 heads x 8 x 4 bytes = 256 B per token


def test_plan_counts_the_paged_pool_by_hand():
    c = _config("sampling.engine=continuous", "sampling.block_size=4", "sampling.max_prompt_length=6",
                "sampling.max_new_tokens=8", "train.prompts_per_step=4", "grpo.group_size=4", "sampling.slots=4",
                "train.eval_batch_size=4")
    assert plan.kv_bytes_per_token(MC) == 2 * 2 * 2 * 8 * 4 == 256
    # One device: 4 prompts of 2 blocks, 4 slots: 4 * (1 + 4 * 2) + 4 * 8 = 68 tokens = 17 blocks.
    one = plan.sampler_cache(c, MC, rows=16, devices=1)
    assert (one.engine, one.slots, one.tokens, one.per_chip, one.prompts) == ("continuous", 4, 68, 68 * 256, 4)
    # Lockstep: every row's P + T = 14 slots: 16 x 14 x 256.
    lock = plan.sampler_cache(c, MC, rows=16, devices=1, engine="lockstep")
    assert (lock.tokens, lock.per_chip) == (224, 224 * 256)
    # 4 devices: one group each (one prompt), one slot each: 4 * (1 + 2) + 8 = 20 tokens per device.
    four = plan.sampler_cache(c, MC, rows=16, devices=4)
    assert (four.tokens, four.per_chip, four.prompts) == (80, 20 * 256, 1)
    # An explicit budget counts whole blocks per device: 70 tokens on one device = 17 blocks of 4.
    given = plan.sampler_cache(cfg_lib.apply_overrides(c, ["sampling.cache_tokens=70"]), MC, rows=16, devices=1)
    assert (given.tokens, given.per_chip) == (70, 68 * 256)
    # Slots that fit a pool: per device floor((tokens - 4 * (1 + prompts * 2)) / 8), a multiple of the
    # devices, at most the rows: 40 tokens per device beside 1 prompt: (40 - 12) // 8 = 3 -> 12 slots.
    assert plan.slots_that_fit(c, MC, four, 40 * 256) == 12
    assert plan.slots_that_fit(c, MC, four, 19 * 256) == 0  # 12 + 8 > 19: not one completion
    assert plan.slots_that_fit(c, MC, four, 10 ** 9) == 16  # every row
    assert plan.slots_that_fit(c, MC, one, one.per_chip) == 4  # the default budget: S slots, no preemption


PLAN_TINY = ["--config", "experiments/quickstart.py", "--config.model.num_layers=2",
             "--config.train.prompts_per_step=4", "--config.grpo.group_size=4", "--config.sampling.engine=continuous",
             "--config.sampling.slots=8", "--config.sampling.block_size=8", "--topology", "cpu"]


def test_plan_compiles_the_continuous_engine_at_the_resolved_slots_and_budget(monkeypatch):
    """16 rows on the 8 test devices: 2 rows per device, a group split over devices (each row its own
    prompt, 2 blocks of 8 for P = 16), 1 slot each: 8 * (1 + 2 * 2) + 32 = 72 tokens per device,
    x 1 KiB (2 layers x 2 x 2 KV heads x 32 x 4 bytes); lockstep would hold 2 x 48 tokens."""
    calls = []
    monkeypatch.setattr(plan, "compile_one", lambda jitted, *a, **k: calls.append((jitted, a, k)))
    config, topology, _, _ = plan.parse_args(PLAN_TINY)
    progs = plan.build_programs(config, plan.get_topology(topology))
    progs.sample()
    jitted, args, kwargs = calls[0]
    assert jitted is continuous._sample_jit
    assert (kwargs["slots"], kwargs["block_size"], kwargs["cache_tokens"]) == (8, 8, 576)
    assert args[2].shape == (16, 16)  # the rows one call samples, P
    assert progs.cache.per_chip == 72 * 1024
    assert plan.sampler_cache(config, progs.model_config, rows=16, devices=8, engine="lockstep").per_chip == 96 * 1024


def test_plan_compiles_and_reports_the_pool(monkeypatch, capsys):
    """The continuous sampler really compiles for the mesh; plan() prints the pool and the slots (the
    train step's compile replaced by fixed numbers: only the sampler's report is checked)."""
    real = plan.compile_one

    def compile_one(jitted, *a, **k):
        if jitted is continuous._sample_jit:
            return real(jitted, *a, **k)
        return plan.Compiled(True, 0.0, 1 << 20, 1 << 20, 0, 2 << 20, 0, None, None)  # the train step

    monkeypatch.setattr(plan, "compile_one", compile_one)
    config, topology, _, _ = plan.parse_args(PLAN_TINY)
    topo = plan.get_topology(topology)._replace(hbm_gib=1.0)
    result = plan.plan(config, topo)
    out = capsys.readouterr().out
    assert result["sampler_engine"] == "continuous" and result["sampler_slots"] == 8
    assert result["kv_cache_gib"] * plan.GiB == 72 * 1024
    assert "sampler KV cache: continuous" in out and "a paged pool of 72 tokens per chip in blocks of 8" in out
    assert "sampler slots: 8 run without preemption in this budget" in out
    assert result["slots_that_fit"] == 16  # 1 GiB per chip holds every row's completion


# --- the sampler calls use the engine -------------------------------------------------------------

@pytest.fixture(scope="module")
def setup():
    overrides = [o for o in TINY if not o.startswith("sft.")] + ["sft.steps=0", "mesh.data=1", "mesh.fsdp=1",
                                                                  "sampling.block_size=8"]
    config, workdir = cfg_lib.parse_command_line(["--config", QUICKSTART, "--workdir", "unused"]
                                                 + [f"--config.{o}" for o in overrides])
    s = build.setup(config, workdir)
    # Many ids end a completion, so rows end at very different lengths (checked below).
    return s._replace(eos_ids=tuple(s.eos_ids) + tuple(range(40, 52)))


def _with(s, *overrides):
    return s._replace(config=cfg_lib.validate(cfg_lib.apply_overrides(s.config, list(overrides))))


@pytest.fixture
def continuous_calls(monkeypatch):
    calls, original = [], continuous.sample

    def spy(*args, **kwargs):
        calls.append(kwargs["slots"])
        return original(*args, **kwargs)

    monkeypatch.setattr(continuous, "sample", spy)
    return calls


def test_rollouts_are_the_same_with_either_engine(setup, continuous_calls):
    examples = [setup.task.train_example(i) for i in range(4)]
    key = jax.random.key(3)
    ref = rollout.generate(setup, setup.params, examples, key)
    assert not continuous_calls
    lengths = ref.mask.sum(1)
    T = setup.config.sampling.max_new_tokens
    assert lengths.min() < T // 2 and len(set(lengths.tolist())) >= 4, lengths  # not uniform lengths
    for overrides, slots in [(["sampling.slots=5"], [5]),  # a queue: 16 rows through 5 slots
                             (["sampling.slots=1000"], [16]),  # clamped to the call's rows
                             (["sampling.slots=1000", "sampling.batch_size=8"], [8, 8])]:  # 2 chunks of 8
        continuous_calls.clear()
        s = _with(setup, "sampling.engine=continuous", *overrides)
        got = rollout.generate(s, s.params, examples, key)
        assert continuous_calls == slots
        want = ref if "sampling.batch_size=8" not in overrides else rollout.generate(
            _with(setup, "sampling.batch_size=8"), setup.params, examples, key)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        assert got.completions == want.completions


def test_eval_uses_the_runs_engine_and_gets_the_same_completions(setup, continuous_calls):
    s = _with(setup, "sampling.engine=continuous", "sampling.slots=3")
    c = s.config
    prompts = [s.task.prompt(e) for e in s.task.eval_examples[:8]]
    common = dict(key=jax.random.key(5), batch_size=4, max_prompt_length=c.sampling.max_prompt_length,
                  max_new_tokens=c.sampling.max_new_tokens, temperature=1.0, put=s.put, eos_ids=s.eos_ids)
    ref = evaluate.generate(s.model_config, s.params, s.tokenizer, prompts, **common)
    assert not continuous_calls
    got = evaluate.generate(s.model_config, s.params, s.tokenizer, prompts, **common, **evaluate.engine_options(c))
    assert continuous_calls == [3, 3] and got == ref  # 2 batches of 4 prompts, 3 slots each
    continuous_calls.clear()
    metrics = evaluate.evaluate_run(s, s.params, jax.random.key(6), 0, types.SimpleNamespace(
        write_detail=lambda *a: None))
    assert continuous_calls and "eval_accuracy" in metrics  # the run's eval samples with its engine
