"""Segmented decode vs one decode loop over the full KV cache, alternating, in one process.

    python -m benchmarks.decode_segments [--new-tokens 128 256 512] [--runs 5]

The benchmark model's shapes (hidden 256, intermediate 1024, 4 layers, 4 heads / 2 KV heads, vocab 512,
tied; random init), batch 64, prompt 32, temperature 1, no EOS. Both programs are the real
`sampling._sample`, compiled once each: "one segment" with `_segment_ends` forced to [T] (every step
attends over all P + T cache slots, the sampler before segmenting), "segmented" with the library's
`_segment_ends` (up to 4 segments over a growing cache). Prints per T the medians and their ratio:
  RESULT new_tokens=T one_segment_s=... segmented_s=... speedup=...
"""
import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import model as model_lib
from grpo_jax import sampling

CONFIG = model_lib.ModelConfig(vocab_size=512, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                               head_dim=64, intermediate_size=1024, tie_embeddings=True, attention_bias=True)


def compiled_sampler(params, tokens, mask, new_tokens: int, segmented: bool):
    library_ends = sampling._segment_ends
    sampling._segment_ends = library_ends if segmented else (lambda t: [t])
    try:  # the segment boundaries are read at trace time
        fn = jax.jit(functools.partial(sampling._sample, max_new_tokens=new_tokens, top_k=0, top_p=1.0,
                                       prompt_sharding=None), static_argnums=0)
        args = (params, tokens, mask, jax.random.key(1), jnp.float32(1.0), jnp.array([-1], jnp.int32))
        compiled = fn.lower(CONFIG, *args).compile()
    finally:
        sampling._segment_ends = library_ends
    return lambda: jax.block_until_ready(compiled(*args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    args = parser.parse_args()
    params = model_lib.init_params(CONFIG, jax.random.key(0))
    tokens = jnp.ones((args.batch, args.prompt_len), jnp.int32)
    mask = jnp.ones((args.batch, args.prompt_len), jnp.int32)
    for t in args.new_tokens:
        one = compiled_sampler(params, tokens, mask, t, segmented=False)
        seg = compiled_sampler(params, tokens, mask, t, segmented=True)
        one(), seg()  # warm up
        times = {"one": [], "seg": []}
        for _ in range(args.runs):  # alternate: the machine's noise hits both sides alike
            for name, fn in (("one", one), ("seg", seg)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        a, b = np.median(times["one"]), np.median(times["seg"])
        print(f"T={t} segments={sampling._segment_ends(t)}: one segment {a:.3f} s ({1e3 * a / t:.1f} ms/step), "
              f"segmented {b:.3f} s ({1e3 * b / t:.1f} ms/step)", flush=True)
        print(f"RESULT new_tokens={t} one_segment_s={a:.4g} segmented_s={b:.4g} speedup={a / b:.3g}", flush=True)


if __name__ == "__main__":
    main()
