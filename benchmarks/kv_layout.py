"""Decode attention's score matmul: keys cached [B, KV, S, hd] (q @ k^T) vs [B, KV, hd, S] (q @ k).

    python -m benchmarks.kv_layout [--slots 96 288 512] [--runs 7]

One decode step's shapes at the benchmark model's sizes: batch 64, 2 KV heads, 2 query rows per KV head
(4 heads, L = 1), head_dim 64, S cache slots. Each program runs 64 score matmuls in a lax.fori_loop (as in
the sampler's decode loop); the two layouts alternate in one process. Prints per S the median time per
matmul and the ratio:
  RESULT slots=S keys_slot_major_us=... keys_transposed_us=... speedup=...
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

B, KV, ROWS, HD, STEPS = 64, 2, 2, 64, 64


def timed_loop(spec: str):
    def run(q, k):
        return jax.lax.fori_loop(0, STEPS, lambda i, acc: acc + jnp.einsum(spec, q + i * 1e-6, k).sum(), 0.0)
    return jax.jit(run)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[96, 288, 512])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for s in args.slots:
        q = jnp.asarray(rng.normal(size=(B, KV, ROWS, HD)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(B, KV, s, HD)), jnp.float32)
        cases = {"keys_slot_major": (timed_loop("bkrd,bksd->bkrs"), k),
                 "keys_transposed": (timed_loop("bkrd,bkds->bkrs"), jnp.swapaxes(k, 2, 3))}
        results = {name: jax.block_until_ready(f(q, kk)) for name, (f, kk) in cases.items()}
        np.testing.assert_allclose(results["keys_slot_major"], results["keys_transposed"], rtol=1e-4)
        times = {name: [] for name in cases}
        for _ in range(args.runs):  # alternate, so machine drift hits both alike
            for name, (f, kk) in cases.items():
                start = time.perf_counter()
                jax.block_until_ready(f(q, kk))
                times[name].append((time.perf_counter() - start) / STEPS)
        med = {name: statistics.median(t) * 1e6 for name, t in times.items()}
        print(f"RESULT slots={s} keys_slot_major_us={med['keys_slot_major']:.0f} "
              f"keys_transposed_us={med['keys_transposed']:.0f} "
              f"speedup={med['keys_slot_major'] / med['keys_transposed']:.2f}", flush=True)


if __name__ == "__main__":
    main()
