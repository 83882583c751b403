"""GRPO on GSM8K, Qwen3-0.6B, full fine-tune, bf16 compute, one TPU v5e-8 (or any 16 GB accelerator).

    python -m grpo_jax.train --config experiments/qwen3_0_6b_gsm8k.py --workdir runs/q3 \
        [--config.task.data_path=PATH/gsm8k] [--config.model.path=PATH/Qwen3-0.6B]

Weights come from a local Hugging Face directory (default `models/Qwen3-0.6B` under the working
directory, downloaded beforehand); nothing is downloaded at run time. The architecture is written
out below so that the plan runs without the weights. Qwen3's chat template opens a thinking block
by default: completions reason inside it and the answer tag follows.

16 prompts x G = 8, 256 + 1024 tokens (thinking models write long), one update per rollout, layers
under one scan with full remat.

Plan (`python -m grpo_jax.plan --config experiments/qwen3_0_6b_gsm8k.py --topology v5e-8`, libtpu
0.0.42.1, 2026-11-30, from the 2-core CPU VM), per chip of 15.75 GiB usable:
    weights 0.278 (f32) + Adam state 0.556 + reference 0.139 (bf16)
    train step: arguments 0.972 + temporaries 5.501 -> peak 6.474 GiB
    sampler (weights replicated): peak 3.840 + resident 0.694 = 4.535 GiB
    per chip 6.474 GiB: FITS with 59 % headroom
    FLOPs per step 9.151e14 (sample 1.83e14, reference 1.83e14, policy fwd+bwd 5.49e14)
    compile: train step 162 s, sampler 56 s (2 cores, other work running)
"""
import pathlib

from grpo_jax.config import Config, load_config


QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
                  head_dim=128, intermediate_size=3072, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_embeddings=True, attention_bias=False, qk_norm=True, max_position_embeddings=40960)


def get_config() -> Config:
    c = load_config(pathlib.Path(__file__).with_name("qwen2_5_1_5b_gsm8k.py"))  # the GSM8K recipe
    c.model.path = "models/Qwen3-0.6B"
    for key, value in QWEN3_0_6B.items():
        setattr(c.model, key, value)
    c.sampling.max_new_tokens = 1024
    return c
