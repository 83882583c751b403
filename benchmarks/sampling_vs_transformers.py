"""Sampling throughput: grpo_jax.sampling.sample vs transformers `generate` on the same tiny Qwen2.

Model: random Qwen2 (hidden 256, intermediate 1024, 4 layers, 4 heads, 2 KV heads, head_dim 64,
vocab 512, tied embeddings, q/k/v bias), built in torch and copied into grpo_jax params, f32.
Workload: batch 64, prompt 32, 128 new tokens, ancestral sampling at temperature 1 (no top-k/top-p),
no EOS stop (every row produces all 128 tokens). Runs alternate (jax, torch, jax, torch, ...) after
one warm-up each (the jax warm-up includes the compile), and the medians are compared, so load from
other processes hits both sides alike.

    python -m benchmarks.sampling_vs_transformers [--runs 5]

Prints `RESULT grpo_jax_tok_s=... transformers_tok_s=... ratio=...` (ratio = grpo_jax / transformers).
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grpo_jax import sampling
from grpo_jax.model import ModelConfig

BATCH, PROMPT, NEW = 64, 32, 128


def build_models(seed: int = 0):
    """The same random tiny Qwen2 as a torch model and as (ModelConfig, grpo_jax params)."""
    torch.manual_seed(seed)
    hf_config = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                            tie_word_embeddings=True, rms_norm_eps=1e-6,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    hf = Qwen2ForCausalLM(hf_config).eval()
    config = ModelConfig(vocab_size=512, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                         head_dim=64, intermediate_size=1024, rope_theta=10000.0, rms_norm_eps=1e-6,
                         tie_embeddings=True, attention_bias=True, max_position_embeddings=512)
    sd = {k: jnp.asarray(v.detach().numpy()) for k, v in hf.state_dict().items()}

    def linear(prefix, bias):  # torch Linear weight is [out, in]; our kernels are [in, out]
        p = {"kernel": sd[prefix + ".weight"].T}
        if bias:
            p["bias"] = sd[prefix + ".bias"]
        return p

    layers = []
    for i in range(config.num_layers):
        pre = f"model.layers.{i}."
        layers.append({
            "input_layernorm": {"scale": sd[pre + "input_layernorm.weight"]},
            "self_attn": {name: linear(pre + "self_attn." + name, name != "o_proj")
                          for name in ("q_proj", "k_proj", "v_proj", "o_proj")},
            "post_attention_layernorm": {"scale": sd[pre + "post_attention_layernorm.weight"]},
            "mlp": {name: linear(pre + "mlp." + name, False) for name in ("gate_proj", "up_proj", "down_proj")},
        })
    params = {"embed_tokens": {"embedding": sd["model.embed_tokens.weight"]}, "layers": layers,
              "norm": {"scale": sd["model.norm.weight"]}}
    return hf, config, params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    hf, config, params = build_models()
    prompts = np.random.default_rng(0).integers(0, config.vocab_size, (BATCH, PROMPT))
    jax_prompts, jax_mask = jnp.asarray(prompts, jnp.int32), jnp.ones((BATCH, PROMPT), jnp.int32)
    torch_prompts, torch_mask = torch.tensor(prompts), torch.ones(BATCH, PROMPT, dtype=torch.long)

    # Sanity: the two models agree (same weights, same layout) before we time them.
    with torch.no_grad():
        ref = hf(input_ids=torch_prompts[:2], attention_mask=torch_mask[:2]).logits[:, -1].numpy()
    from grpo_jax.model import apply
    ours = np.asarray(apply(config, params, jax_prompts[:2], attention_mask=jax_mask[:2])[:, -1])
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()

    def run_jax(seed):
        out = sampling.sample(config, params, jax_prompts, jax_mask, jax.random.key(seed), max_new_tokens=NEW,
                              eos_id=-1, temperature=1.0)
        out.tokens.block_until_ready()
        return out

    def run_torch(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return hf.generate(input_ids=torch_prompts, attention_mask=torch_mask, do_sample=True,
                               temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW, min_new_tokens=NEW,
                               eos_token_id=None, pad_token_id=0)

    start = time.perf_counter()
    out = run_jax(0)
    print(f"grpo_jax first call (compile + run): {time.perf_counter() - start:.2f} s")
    assert float(out.mask.sum()) == BATCH * NEW
    gen = run_torch(0)
    assert gen.shape == (BATCH, PROMPT + NEW), gen.shape

    jax_times, torch_times = [], []
    for i in range(args.runs):
        start = time.perf_counter()
        run_jax(i + 1)
        jax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_torch(i + 1)
        torch_times.append(time.perf_counter() - start)
        print(f"run {i}: grpo_jax {jax_times[-1]:.3f} s  transformers {torch_times[-1]:.3f} s")

    tokens = BATCH * NEW
    jax_tok_s = tokens / statistics.median(jax_times)
    torch_tok_s = tokens / statistics.median(torch_times)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"RESULT grpo_jax_tok_s={jax_tok_s:.0f} transformers_tok_s={torch_tok_s:.0f} "
          f"ratio={jax_tok_s / torch_tok_s:.2f}")


if __name__ == "__main__":
    main()
