"""GRPO on GSM8K, Qwen2.5-7B-Instruct with LoRA (rank 16 on every projection), bf16 compute, one TPU
v5e-8 (16 GiB per chip), or one 80 GB GPU.

    python -m grpo_jax.train --config experiments/qwen2_5_7b_gsm8k_lora.py --workdir runs/q7 \
        [--config.task.data_path=PATH/gsm8k] [--config.model.path=PATH/Qwen2.5-7B-Instruct]

Weights come from a local Hugging Face directory (default `models/Qwen2.5-7B-Instruct` under the
working directory, downloaded beforehand); nothing is downloaded at run time. The architecture is
written out below so that the plan runs without the weights.

Only the adapters (40 M parameters) and their Adam state are trained; the frozen base is kept in the
compute dtype (bf16, 15.2 GB) and is also the reference policy with the adapters off, so there is no
second copy of the weights. 8 prompts x G = 8, 256 + 512 tokens, one update per rollout, layers under
one scan with full remat, the sampler decoding with tensor-parallel weights (sampling.weight_layout).

Plan (`python -m grpo_jax.plan --config experiments/qwen2_5_7b_gsm8k_lora.py --topology v5e-8`, libtpu
0.0.42.1, 2026-11-30, from the 2-core CPU VM), per chip of 15.75 GiB usable:
    frozen base 1.774 (bf16) + adapters 0.114 + their Adam state 0.228
    train step: arguments 2.117 + temporaries 5.943 -> peak 8.060 GiB
    sampler (tensor-parallel MLP and vocabulary; 28 / 4 heads do not divide 8, so attention
    weights replicated): peak 5.544 + resident 2.115 = 7.659 GiB
    per chip 8.060 GiB: FITS (49 % headroom)
    FLOPs per step 2.484e15 (sample 4.96e14, reference 4.97e14, policy fwd+bwd 1.49e15)
    compile: train step 160 s, sampler 80 s (2 cores, other work running)

One 80 GB GPU (mesh 1 x 1, `--config.model.attention=cudnn --config.train.shared_prefix=false`: the
shared-prefix forward has no cuDNN kernel), by the memory arithmetic: base 15.2 GB
(bf16) + adapters, grads and Adam 0.65 GB + the scanned forward's stacked bf16 copy of the layers
13.0 GB + saved layer inputs 64 x 768 x 3584 x 2 B x 28 = 9.9 GB + one layer recomputed in the
backward (MLP [64 x 768 x 18944] bf16 = 1.9 GB, about 3 live: 5.6 GB; flash attention saves no
probabilities) + LM-head chunks ~1 GB = about 45 GB while training; sampling holds the base plus a
64-row KV cache of 64 x 28 x 2 x 4 x 128 x 768 x 2 B = 2.8 GB. With scan_layers=false the stacked
copy goes (about 32 GB). XLA:CPU compiled for one device (`--topology cpu`, shared prefix off: XLA attention keeps f32
[64, 28, 768, 768] scores, probabilities and their gradients) reports 88.3 GiB, so on a GPU without
cuDNN attention use train.num_minibatches=2.
"""
import pathlib

from grpo_jax.config import Config, load_config


QWEN2_5_7B = dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                  head_dim=128, intermediate_size=18944, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_embeddings=False, attention_bias=True, qk_norm=False, max_position_embeddings=32768)


def get_config() -> Config:
    c = load_config(pathlib.Path(__file__).with_name("qwen2_5_1_5b_gsm8k.py"))  # the GSM8K recipe
    c.model.path = "models/Qwen2.5-7B-Instruct"
    for key, value in QWEN2_5_7B.items():
        setattr(c.model, key, value)
    c.model.lora_rank = 16
    c.model.lora_alpha = 32.0
    c.sampling.weight_layout = "tensor"
    c.optim.learning_rate = 1e-5  # LoRA adapters take a larger step than full fine-tuning
    c.train.prompts_per_step = 8
    return c
