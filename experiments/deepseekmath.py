"""DeepSeekMath GRPO (Shao et al. 2024, arXiv:2402.03300, §4.2 and Table/§4.1.2).

Published: G = 64 outputs per question, KL coefficient beta = 0.04, policy learning rate 1e-6,
max length 1024, 1024 samples per batch (16 questions x 64), a single policy update per
exploration stage (mu = 1, K = 1 optimizer step per rollout), outcome supervision with per-group normalised rewards; mean over tokens then over outputs
("grpo" aggregation). The paper does not print epsilon; 0.2 is the PPO value its code and TRL use.

    python -m grpo_jax.train --config experiments/deepseekmath.py --workdir runs/dsmath \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR

Lengths: 512 prompt tokens (GSM8K / MATH questions through a chat template are 100-400 tokens;
longer ones are dropped at data load and counted), 1024 new tokens (the paper's max length).
Expected: the paper's setting for 7B models; on the CPU quick-start model G = 64 is slow.
tests/test_presets.py runs it for 2 steps on a tiny Qwen2 checkpoint.
Pinned by tests/test_presets.py.

At scale, planned with Qwen2.5-7B (full fine-tune; $QWEN2_5_7B is the architecture, README "Will
it fit?"):

    python -m grpo_jax.plan --config experiments/deepseekmath.py --topology v5p-8 $QWEN2_5_7B

    FITS on a TPU v5p-8 (4 chips, 93.5 GiB usable each): 71.4 GiB per chip. Train step: arguments
    24.8 (f32 weights 7.1 + Adam 14.2 + bf16 reference 3.5) + temporaries 46.5, M = 8 microbatches
    of 128 rows, each prompt encoded once per 8 of its rows (the shared prefix, with the splash
    kernel); at M = 4 it fits with 1 GiB to spare (92.5 GiB). Sampler: all 1024 rows in one call,
    32.8 + resident 17.7 = 50.5. FLOPs per step 7.98e16. Compile 625 + 375 s (libtpu 0.0.42.1,
    2-core CPU VM, 2026-12-03).
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.group_size = 64
    c.grpo.beta = 0.04
    c.grpo.epsilon = 0.2
    c.grpo.loss_type = "grpo"
    c.grpo.scale_rewards = "group"
    c.grpo.num_iterations = 1
    c.optim.learning_rate = 1e-6
    c.train.prompts_per_step = 16
    c.train.steps_per_generation = 1
    c.sampling.max_prompt_length = 512
    c.sampling.max_new_tokens = 1024
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
    c.train.num_minibatches = 8
    return c
