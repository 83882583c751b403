"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783).

GRPO "done right": no division by the per-group reward std (scale_rewards="none") and no division
by each completion's length (loss_type="dr_grpo": masked sum / (N * max_completion_length)), both of
which bias GRPO (towards easy/hard questions, and towards long wrong answers). Their runs: no KL
(beta = 0), epsilon = 0.2, G = 8, 128 prompts per step, learning rate 1e-6, temperature 1, max
3,000 generated tokens, one optimizer step per rollout (their train and rollout batch sizes are
equal: K = 1).

Lengths: 1024 prompt tokens (longer prompts are dropped at data load and counted), 3,000 new tokens.

    python -m grpo_jax.train --config experiments/dr_grpo.py --workdir runs/dr_grpo \
        --config.task.name=math500 --config.task.data_path=PATH/math500 \
        --config.task.train_data_path=PATH/math --config.model.path=HF_DIR

At scale, planned with Qwen2.5-7B (full fine-tune; $QWEN2_5_7B is the architecture, README "Will
it fit?"; the paper also trains Qwen2.5-Math-7B):

    python -m grpo_jax.plan --config experiments/dr_grpo.py --topology v5p-8 $QWEN2_5_7B

    FITS on a TPU v5p-8 (4 chips, 93.5 GiB usable each): 68.9 GiB per chip. Train step: arguments
    21.3 (f32 weights 7.1 + Adam 14.2) + temporaries 47.6, M = 32 microbatches of 32 rows (8 rows of
    4,024 tokens per chip; at M = 16, 88.6 GiB: too close); sampler: 512 rows per call (2 per step),
    41.2 + resident 14.2 = 55.4. FLOPs per step 2.30e17. Compile 370 + 271 s (libtpu 0.0.42.1,
    2-core CPU VM, 2026-12-03).

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.group_size = 8
    c.grpo.epsilon = 0.2
    c.grpo.beta = 0.0
    c.grpo.loss_type = "dr_grpo"
    c.grpo.scale_rewards = "none"
    c.optim.learning_rate = 1e-6
    c.train.prompts_per_step = 128
    c.train.steps_per_generation = 1
    c.sampling.max_prompt_length = 1024
    c.sampling.max_new_tokens = 3000
    # At scale (the plan in the docstring): f32 master weights and Adam state sharded over every chip
    # (FSDP), bf16 compute, layers under one scan with full remat, the backend's attention kernel
    # (splash on TPU: no [rows, H, L, L] scores), tensor-parallel sampler weights, rollouts in chunks.
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.model.attention = "auto"
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.sampling.weight_layout = "tensor"
    c.sampling.batch_size = 512
    c.train.num_minibatches = 32
    return c
