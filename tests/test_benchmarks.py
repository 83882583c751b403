"""benchmarks/: the pieces that run on any model shape (CPU, seconds).

The roofline probe of benchmarks/grpo_step.py once assumed 2 * num_kv_heads * head_dim >= hidden_size
and crashed on SmolLM2-135M (D 576, 9 heads / 3 KV heads of 64: 2 * 3 * 64 = 384 < 576), so the step
of the one real model could not be timed; where num_kv_heads * head_dim >= hidden_size it cut the v
projection away, and XLA dropped it as dead code (the probe then ran fewer FLOPs than it counted). The
shapes here keep SmolLM2's proportions, and the other ways a shape can differ, at toy size.
"""
import math

import pytest

from benchmarks import grpo_step
from grpo_jax.model import ModelConfig


def _config(**kw):
    base = dict(vocab_size=96, hidden_size=48, num_layers=2, num_heads=3, num_kv_heads=1, head_dim=16,
                intermediate_size=128, tie_embeddings=True)
    return ModelConfig(**{**base, **kw})


SHAPES = {
    # SmolLM2-135M / 12: D 576 -> 48, 9 / 3 heads of 64 -> 3 / 1 of 16: 2 * KV * hd = 32 < D = 48
    "smollm2_proportions": _config(),
    "heads_x_head_dim_above_D": _config(num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=40),  # 64 != 40
    "kv_above_D": _config(num_heads=4, num_kv_heads=4, head_dim=16, hidden_size=32),  # 128 > 32
    "vocab_below_D": _config(num_kv_heads=3, vocab_size=32),  # the LM head narrower than the hidden size
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_roofline_probe_runs_on_any_shape(name):
    gflops = grpo_step.matmul_gflops(SHAPES[name], 8, reps=2, tries=1)
    assert math.isfinite(gflops) and gflops > 0


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_roofline_probe_executes_the_flops_it_counts(name):
    """XLA's own count of one probe pass (reps=1: a loop body is counted once) is the analytic matmul
    count plus the few elementwise ops: no projection was cut away, none dropped as dead code."""
    run, args, flops = grpo_step.matmul_probe(SHAPES[name], 8, reps=1)
    analysis = run.lower(*args).compile().cost_analysis()
    compiled = (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"]
    assert flops <= compiled <= 1.05 * flops, (compiled, flops)


# ---------------------------------------------------------------------- benchmarks/sampler_engine.py
def test_sampler_engine_slot_specs():
    from benchmarks import sampler_engine

    assert [sampler_engine.parse_slots(x, 16) for x in ("N", "N/4", "n/2", "6")] == [16, 4, 8, 6]
    with pytest.raises(SystemExit, match="N/3"):
        sampler_engine.parse_slots("N/3", 16)


def test_sampler_engine_counts_steps_and_utilisation(capsys):
    """The quick start's model at toy size, both engines. With EOS off every row runs T tokens: the
    prefill draws token 0, then lockstep runs T - 1 decode steps over N rows and the continuous engine
    with S slots (N / S) x (T - 1) (a slot is refilled as its row ends), every slot-step useful
    (utilisation 1). Both engines give the same tokens; the table has a row per engine."""
    from benchmarks import sampler_engine

    n, t = 16, 16
    results = sampler_engine.main(["--cases", "uniform", "quickstart", "--rows", str(n), "--max-new-tokens", str(t),
                                   "--slots", "N/2", "N", "--block-size", "8", "--repeats", "1"])
    by = {(r["case"], r["engine"], r["slots"]): r for r in results}
    assert sorted(by) == sorted((case, e, s) for case in ("uniform", "quickstart")
                                for e, s in (("lockstep", n), ("continuous", n), ("continuous", n // 2)))
    for s in (n, n // 2):
        r = by["uniform", "continuous", s]
        assert (r["p50"], r["p90"], r["max"], r["tokens"]) == (t, t, t, n * t)
        assert r["steps"] == (n // s) * (t - 1) and r["utilisation"] == 1.0 and r["preempted"] == 0
        assert r["slot_steps"] == r["useful_slot_steps"] == n * (t - 1)
    lock = by["uniform", "lockstep", n]
    assert lock["steps"] == t - 1 and lock["utilisation"] == 1.0 and lock["speedup"] == 1.0
    for r in results:
        assert r["rows_differing"] == 0, r
        assert 0 < r["utilisation"] <= 1.0 and r["tokens_per_s"] > 0
    quick = by["quickstart", "lockstep", n]
    # all N rows step until the longest ends; S = N slots take as many steps (no queue)
    assert quick["steps"] == quick["max"] - 1 == by["quickstart", "continuous", n]["steps"]
    out = capsys.readouterr().out
    assert "| uniform | quickstart (random init) | continuous | 8 | 16 x 16 | 16 / 16 / 16 | 30 | 1.00 |" in out
    assert out.count("RESULT case=") == 6


def test_sampler_engine_training_step_with_each_engine():
    """The train case at toy size (the quick start's config): a GRPO step per engine, each from the
    same weights. The engines draw the same samples, so both train the same model: equal rewards and
    completion lengths at every step, losses equal to float round-off."""
    import argparse

    from benchmarks import sampler_engine

    config = sampler_engine.quickstart_config(16, 8, 16, 0)
    out = sampler_engine.train_case(argparse.Namespace(block_size=8, train_steps=1), config)
    assert [r["engine"] for r in out] == ["lockstep", "continuous"]
    lock, cont = (r["steps"] for r in out)
    assert len(lock) == len(cont) == 2
    for a, b in zip(lock, cont):
        assert (a["reward_mean"], a["length_mean"], a["length_max"]) == (b["reward_mean"], b["length_mean"],
                                                                         b["length_max"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert out[0]["speedup"] == 1.0 and out[1]["step_s"] > 0
