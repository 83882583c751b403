"""DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher, token-level loss, overlong shaping, no KL.

Published: epsilon_low = 0.2, epsilon_high = 0.28 (clip-higher), token-level policy-gradient loss
(sum over all tokens of the batch / number of tokens: our "bnpo"), no KL term (beta = 0),
G = 16, 512 prompts per batch, learning rate 1e-6, max generation 20,480 tokens of which the last
4,096 are the soft overlong punishment interval, 16 optimizer steps per rollout (mini-batches of
32 prompts: K = 16), and dynamic sampling: groups whose rewards are all equal carry no gradient, so
3x the prompts are sampled per round (the verl recipe's gen_prompt_bsz = 3 x train_prompt_bsz) and
only groups with signal fill the batch, resampling up to 10 rounds. Overlong *filtering* (masking
truncated completions) is the paper's alternative to the soft punishment and is off, as in its
final recipe (--config.grpo.mask_truncated_completions=true switches it on).

Lengths: 2,048 prompt tokens (the verl recipe's max_prompt_length; longer prompts are dropped at
data load and counted), 20,480 new tokens.

    python -m grpo_jax.train --config experiments/dapo.py --workdir runs/dapo \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR

At scale, planned with Qwen2.5-7B (full fine-tune; $QWEN2_5_7B is the architecture, README "Will
it fit?"):

    python -m grpo_jax.plan --config experiments/dapo.py --topology v5p-8 $QWEN2_5_7B

    FITS on a TPU v5p-8 (4 chips, 93.5 GiB usable each): 76.8 GiB per chip. Train step: arguments
    21.6 (f32 weights 7.1 + Adam 14.2) + temporaries 55.1, M = 64 (2 rows of 22,528 tokens per chip
    per microbatch); sampler: 128 rows per call (192 calls per dynamic-sampling round of 1,536 x 16
    rows; the round at once would need 32 TB of KV cache): 50.2 + resident 14.2 = 64.4. FLOPs per
    step 2.33e19 with one sampling round (9.6e18; each further round adds as much). Compile
    533 + 350 s (libtpu 0.0.42.1, 2-core CPU VM, 2026-12-03).

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.group_size = 16
    c.grpo.epsilon = 0.2
    c.grpo.epsilon_high = 0.28
    c.grpo.beta = 0.0
    c.grpo.loss_type = "bnpo"
    c.optim.learning_rate = 1e-6
    c.train.prompts_per_step = 512
    c.train.steps_per_generation = 16
    c.grpo.dynamic_sampling = True
    c.grpo.dynamic_sampling_factor = 3.0
    c.grpo.dynamic_sampling_max_rounds = 10
    c.sampling.max_prompt_length = 2048
    c.sampling.max_new_tokens = 20480
    c.rewards.weights["overlong"] = 1.0
    c.rewards.overlong_cache = 4096
    # At scale (the plan in the docstring): f32 master weights and Adam state sharded over every chip
    # (FSDP), bf16 compute, layers under one scan with full remat, the backend's attention kernel
    # (splash on TPU: no [rows, H, L, L] scores), tensor-parallel sampler weights, rollouts in chunks.
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.model.attention = "auto"
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.sampling.weight_layout = "tensor"
    c.sampling.batch_size = 128
    c.train.num_minibatches = 64
    return c
