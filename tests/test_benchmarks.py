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
