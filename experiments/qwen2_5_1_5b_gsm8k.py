"""GRPO on GSM8K, Qwen2.5-1.5B-Instruct, full fine-tune, bf16 compute, one TPU v5e-8 (16 GiB per chip).

    python -m grpo_jax.train --config experiments/qwen2_5_1_5b_gsm8k.py --workdir runs/q15 \
        [--config.task.data_path=PATH/gsm8k] [--config.model.path=PATH/Qwen2.5-1.5B-Instruct]

Weights come from a local Hugging Face directory (default `models/Qwen2.5-1.5B-Instruct` under the
working directory, e.g. `huggingface-cli download Qwen/Qwen2.5-1.5B-Instruct --local-dir ...` done
beforehand); nothing is downloaded at run time. The architecture is also written out below so that
the plan runs without the weights (when model.path exists, its config.json is what counts).

The whole batch in one update (no minibatching): 16 prompts x G = 8, 256 + 512 tokens, f32 master
weights and Adam state sharded over the 8 chips (FSDP), layers under one scan with full remat.

Plan (`python -m grpo_jax.plan --config experiments/qwen2_5_1_5b_gsm8k.py --topology v5e-8`, libtpu
0.0.42.1, 2026-11-30, from the 2-core CPU VM), per chip of 15.75 GiB usable:
    weights 0.719 (f32) + Adam state 1.439 + reference 0.360 (bf16)
    train step: arguments 2.518 + temporaries 4.741 -> peak 7.259 GiB
    sampler (weights replicated, one prefill per prompt): peak 4.742 + resident 1.798 = 6.540 GiB
    per chip 7.259 GiB: FITS with 54 % headroom, no minibatching (largest batch ~44 prompts, estimate)
    FLOPs per step 1.094e15 (sample 2.19e14, reference 2.19e14, policy fwd+bwd 6.57e14; 1.473e15
    before one prefill per prompt and the shared-prefix update)
    compile: train step 80 s, sampler 31 s (quiet 2-core VM)
Before scan + remat (unrolled layers, no remat) the same step needed 4 minibatches to fit (15.2 GiB).
"""
from grpo_jax.config import Config


QWEN2_5_1_5B = dict(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                    head_dim=128, intermediate_size=8960, rope_theta=1e6, rms_norm_eps=1e-6,
                    tie_embeddings=True, attention_bias=True, qk_norm=False, max_position_embeddings=32768)


def get_config() -> Config:
    c = Config()
    c.model.path = "models/Qwen2.5-1.5B-Instruct"
    for key, value in QWEN2_5_1_5B.items():
        setattr(c.model, key, value)
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.mesh.data, c.mesh.fsdp = 1, -1  # every chip one FSDP shard
    c.task.name = "gsm8k"
    c.task.data_path = "data/gsm8k"  # train.jsonl / test.jsonl of the GSM8K release (shared/data/gsm8k)
    c.task.chat_template = True
    c.task.eval_size = 500
    c.rewards.weights["format"] = 0.1
    c.grpo.group_size = 8
    c.grpo.beta = 0.04
    c.sampling.max_prompt_length = 256
    c.sampling.max_new_tokens = 512
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 10
    c.train.steps = 500
    c.train.prompts_per_step = 16
    c.train.eval_every = 50
    c.train.eval_batch_size = 64
    c.train.checkpoint_every = 50
    return c
