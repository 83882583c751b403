"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071).

One importance ratio per sequence, the length-normalised likelihood ratio
exp(mean_t (logp - old_logp)), clipped in a much narrower band: epsilon_low = 3e-4,
epsilon_high = 4e-4 (the paper's setting), no KL term, each rollout batch split into 4 minibatches
with one optimizer step each (K = 4): the band only matters off-policy, i.e. from the second of
those steps on (at K = 1, mu = 1 the ratio is exactly 1).

Lengths: the paper does not state them for this recipe; 1024 prompt tokens and 2048 new tokens
are our choice for GSM8K / MATH-style tasks (longer prompts are dropped at data load and counted).

    python -m grpo_jax.train --config experiments/gspo.py --workdir runs/gspo \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR

At scale, planned with Qwen2.5-7B (full fine-tune; $QWEN2_5_7B is the architecture, README "Will
it fit?"):

    python -m grpo_jax.plan --config experiments/gspo.py --topology v5p-8 $QWEN2_5_7B

    FITS on a TPU v5p-8 (4 chips, 93.5 GiB usable each): 46.5 GiB per chip. Train step: arguments
    21.3 (f32 weights 7.1 + Adam 14.2) + temporaries 25.2, no minibatching (8 rows of 3,072 tokens
    per chip in each of the K = 4 updates, each prompt encoded once per 2 of its rows); sampler: all
    128 rows in one call, 16.7 + resident 14.2 = 30.9. FLOPs per step 2.33e16. Compile 649 + 681 s
    (libtpu 0.0.42.1, 2-core CPU VM shared with other jobs, 2026-12-03).

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.importance_level = "sequence"
    c.grpo.epsilon = 3e-4
    c.grpo.epsilon_high = 4e-4
    c.grpo.beta = 0.0
    c.train.steps_per_generation = 4
    c.sampling.max_prompt_length = 1024
    c.sampling.max_new_tokens = 2048
    # At scale (the plan in the docstring): f32 master weights and Adam state sharded over every chip
    # (FSDP), bf16 compute, layers under one scan with full remat, the backend's attention kernel
    # (splash on TPU: no [rows, H, L, L] scores), tensor-parallel sampler weights, rollouts in chunks.
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.model.attention = "auto"
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.sampling.weight_layout = "tensor"
    c.sampling.batch_size = 0
    c.train.num_minibatches = 1
    return c
