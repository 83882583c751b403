"""DeepSeek-R1-Zero GRPO (DeepSeek-AI, Nature 645, 2025; Methods, "Training details").

As recalled from the Nature Methods section (check against the paper before citing): learning rate
3e-6, KL coefficient beta = 0.001, clip ratio epsilon = 10 (clipping is almost never active),
sampling temperature 1, G = 16 outputs per question, 32 questions per step (batch 512), max length
32,768 tokens, the <think> format, accuracy + format rules as reward, each rollout split into 16 minibatches with one
optimizer step each (K = 16). Not reproduced here: the reference model refresh every 400 steps.

Lengths: 1024 prompt tokens (longer prompts are dropped at data load and counted), 32,768 new
tokens (the paper's; lower it with --config.sampling.max_new_tokens for anything smaller than a pod).

    python -m grpo_jax.train --config experiments/r1.py --workdir runs/r1 \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR \
        --config.sampling.max_new_tokens=1024

At scale, planned with Qwen2.5-7B (full fine-tune; $QWEN2_5_7B is the architecture, README "Will
it fit?"):

    python -m grpo_jax.plan --config experiments/r1.py --topology v5p-8 $QWEN2_5_7B

    FITS on a TPU v5p-8 (4 chips, 93.5 GiB usable each): 73.4 GiB per chip. Train step: arguments
    24.9 (f32 weights 7.1 + Adam 14.2 + bf16 reference 3.5) + temporaries 48.6; sampler (64 rows of
    33,792 tokens per call, 8 calls per step): 39.9 + resident 17.7 = 57.7. Each microbatch is one
    row per chip (M = 8: 32 rows per optimizer step over 4 chips), the least data parallelism can
    give: longer rows, or chips with less memory (no v5e / v6e slice), need context parallelism.
    FLOPs per step 2.16e18. Compile 540 + 271 s (libtpu 0.0.42.1, 2-core CPU VM, 2026-12-03).
    Qwen2.5-7B has 32,768 positions: 1024 + 32,768 exceeds them (its model card's YaRN extension is
    not implemented here), so a real run needs a model with the context, or fewer new tokens.
    Eval decodes train.eval_batch_size = 64 rows at once (31 GiB of KV cache per chip).

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.group_size = 16
    c.grpo.epsilon = 10.0
    c.grpo.beta = 0.001
    c.grpo.loss_type = "grpo"
    c.optim.learning_rate = 3e-6
    c.sampling.temperature = 1.0
    c.sampling.max_prompt_length = 1024
    c.sampling.max_new_tokens = 32768
    c.train.prompts_per_step = 32
    c.train.steps_per_generation = 16
    c.task.prompt_style = "think"
    c.rewards.weights["format"] = 1.0
    # At scale (the plan in the docstring): f32 master weights and Adam state sharded over every chip
    # (FSDP), bf16 compute, layers under one scan with full remat, the backend's attention kernel
    # (splash on TPU: no [rows, H, L, L] scores), tensor-parallel sampler weights, rollouts in chunks.
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.model.attention = "auto"
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.sampling.weight_layout = "tensor"
    c.sampling.batch_size = 64
    c.train.num_minibatches = 8
    c.train.eval_batch_size = 64  # greedy eval decodes 64 rows of 33k tokens at once (the KV cache)
    return c
