"""Where the grpo_jax update's time goes (the grpo_step workload's shapes), alternating, medians.

    python -m benchmarks.profile_update [--model-dir benchmarks/_models/tiny_qwen2] [--reps 5]

Times, on one batch of N = 64 rows, prompt 32, completion 64 (jitted, blocked, medians of --reps):
  fwd        scoring.completion_logps (the reference forward)
  grad       jax.grad of the masked mean log-prob w.r.t. all params (forward + backward, no GRPO extras)
  step_ref   the real train step (use_reference=True: ref forward + policy fwd/bwd + AdamW)
  step_noref the real train step with use_reference=False
  scatter    the embedding-gather backward alone (scatter-add of N*(P+T) rows into [V, D])
  dw_3d      one weight-gradient einsum "bld,blf->df" at [N, P+T, 256] x [N, P+T, 1024]
  dw_2d      the same contraction written on [N*(P+T), .] 2-D arrays
Prints RESULT fwd_s=... grad_s=... step_ref_s=... step_noref_s=... scatter_s=... dw_3d_s=... dw_2d_s=...
and grad/fwd (3.0 = the textbook forward + backward cost).
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import scoring, sharding, weights
from grpo_jax import train_step as ts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="benchmarks/_models/tiny_qwen2")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    n, p, t = 64, 32, 64
    mesh = sharding.make_mesh(data=1, fsdp=len(jax.devices()))
    config, params = weights.load_hf(args.model_dir, mesh=mesh)
    rng = np.random.default_rng(0)
    ptok = jnp.asarray(rng.integers(4, 100, (n, p)), jnp.int32)
    pmask = jnp.ones((n, p), jnp.int32)
    ctok = jnp.asarray(rng.integers(4, 100, (n, t)), jnp.int32)
    cmask = jnp.ones((n, t), jnp.float32)
    adv = jnp.asarray(rng.normal(size=n), jnp.float32)
    batch = ts.Batch(ptok, pmask, ctok, cmask, adv)

    fwd = jax.jit(lambda prm: scoring.completion_logps(config, prm, ptok, pmask, ctok))
    grad = jax.jit(jax.grad(lambda prm: (scoring.completion_logps(config, prm, ptok, pmask, ctok) * cmask).mean()))
    opt = ts.make_optimizer(learning_rate=1e-6)
    hp = ts.make_hparams(epsilon=0.2, beta=0.04, temperature=1.0)
    step_ref = jax.jit(ts.build_train_step(config, opt, use_reference=True))
    step_noref = jax.jit(ts.build_train_step(config, opt, use_reference=False))
    state = ts.TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
    rows = n * (p + t)
    tokens_flat = jnp.concatenate([ptok, ctok], 1).reshape(-1)
    g_out = jnp.ones((rows, config.hidden_size), jnp.float32)
    emb = params["embed_tokens"]["embedding"]
    scatter = jax.jit(lambda e, gy: jax.vjp(lambda e_: e_[tokens_flat], e)[1](gy)[0])
    x3 = jnp.ones((n, p + t, config.hidden_size), jnp.float32)
    y3 = jnp.ones((n, p + t, config.intermediate_size), jnp.float32)
    dw3 = jax.jit(lambda a, b: jnp.einsum("bld,blf->df", a, b))
    dw2 = jax.jit(lambda a, b: a.reshape(rows, -1).T @ b.reshape(rows, -1))

    cases = {
        "fwd": lambda: fwd(params), "grad": lambda: grad(params),
        "step_ref": lambda: step_ref(state, params, batch, hp)[1]["loss"],
        "step_noref": lambda: step_noref(state, None, batch, hp)[1]["loss"],
        "scatter": lambda: scatter(emb, g_out), "dw_3d": lambda: dw3(x3, y3), "dw_2d": lambda: dw2(x3, y3),
    }
    times = {k: [] for k in cases}
    for k, f in cases.items():
        jax.block_until_ready(f())  # compile
    for _ in range(args.reps):  # alternate the cases, so load hits all alike
        for k, f in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>10}: {v * 1e3:8.1f} ms")
    print(f"grad/fwd = {med['grad'] / med['fwd']:.2f} (3.0 = textbook); step_ref/fwd = "
          f"{med['step_ref'] / med['fwd']:.2f} (4.0 = textbook); dw_3d/dw_2d = {med['dw_3d'] / med['dw_2d']:.2f}")
    print("RESULT " + " ".join(f"{k}_s={v:.4g}" for k, v in med.items()) +
          f" grad_over_fwd={med['grad'] / med['fwd']:.3g} step_ref_over_fwd={med['step_ref'] / med['fwd']:.3g}")


if __name__ == "__main__":
    main()
