"""Accelerator attention kernels for the training forward (no KV cache): cuDNN (GPU) and splash (TPU).

    attend(impl, q, k, v, attention_mask) -> [B, L, H*hd]

computes the same function as `model._attention` on the no-cache path (the "xla" implementation and
the reference):

    out[b, i, h] = sum_j softmax_j(s[b, h, i, j]) v[b, j, h // g],   g = H // KV
    s[b, h, i, j] = q[b, i, h] . k[b, j, h // g] / sqrt(hd)   if j <= i and attention_mask[b, j] == 1
                  = masked                                      otherwise

- q [B, L, H, hd] (after RoPE), k / v [B, L, KV, hd], all in one dtype; the output is in that dtype.
  GQA: query head h reads KV head h // g (groups of g consecutive query heads, HF's repeat_kv); both
  kernels take the KV heads as they are, nothing is repeated in memory.
- attention_mask [B, L]: 1 on real tokens, 0 on LEFT padding (what `scoring` builds: a left-padded
  prompt followed by the completion). Scores and softmax are f32 inside both kernels.
- Pad query rows are never read by the model. Here they come out finite (zero for cuDNN, an average
  of pad values for splash), and their cotangents never turn into NaN gradients.

impl "cudnn" (NVIDIA GPUs): `jax.nn.dot_product_attention(implementation="cudnn", is_causal=True)`.
  cuDNN's padding masks (query_seq_lengths / key_value_seq_lengths) describe RIGHT padding only: a
  row's valid keys are 0 .. len - 1. A boolean `mask` is accepted too, but jax turns it into an
  additive bias [B, 1, L, L] that is materialised, read by the kernel and differentiated (a dbias of
  that size in the backward): quadratic memory, which is what flash attention exists to avoid. So
  the rows are ROLLED instead: with p_b = L - n_b pads in row b (n_b real tokens),

      x'[b, i] = x[b, (i + p_b) mod L]      (real tokens move to 0 .. n_b - 1, pads to the end)

  for q, k and v. Causal order among the real tokens is preserved (original indices p_b + i and
  p_b + j compare as i and j), and the pads now sit after every real token, so causal masking over
  the rolled rows already gives each real query exactly the reference's keys; RoPE was applied
  before, with the positions the mask gave. query_seq_lengths = key_value_seq_lengths = n_b
  (cuDNN's PADDING_CAUSAL) change no real row: they only let the kernel skip the pad rows and keys.
  The output is rolled back (out[b, i] = out'[b, (i - p_b) mod L]) and its pad rows zeroed. Both
  rolls are gathers (a permutation of each row); their gradients are the inverse permutations.
  Only valid for LEFT padding (real tokens contiguous at the end of each row), which is the model's
  contract; it is not checked (the mask is traced). Requirements of the cuDNN kernel itself (jax
  checks them and raises): bf16 or fp16 inputs (f32 raises here, before any GPU is needed), head_dim
  a multiple of 8 and <= 128 (<= 256 on Hopper and later); without a CUDA GPU jax raises
  "cuDNN is not detected". (No bias is passed, so cuDNN's even-length rule for biases does not apply.)
  A row with no real token gets seq_length 1 (not 0), so the kernel never sees an empty row.

impl "dot_product_xla": the same rolled computation through `jax.nn.dot_product_attention`'s XLA
  implementation (any backend, f32 allowed): the cuDNN path's code, testable on CPU.

impl "splash" (TPU): the Pallas splash-attention kernel
  (jax.experimental.pallas.ops.tpu.splash_attention), one kernel per batch row under jax.vmap:
  - layout: q [H, L, hd], k / v [KV, L, hd] per row; the kernel's multi-head mode does GQA itself
    (query head h reads KV head h // (H // KV), the same grouping).
  - scale: the kernel computes q k^T unscaled, so q is multiplied by hd**-0.5 first (in f32, then
    cast back to q's dtype: one extra rounding of q for bf16 unless hd is a power of 4).
  - masking: a static CausalMask (whose fully masked blocks the kernel skips) AND segment ids, real
    tokens segment 1 and pads segment 0: query i sees key j iff j <= i and seg[j] == seg[i]. For a
    real query that is exactly the reference; a pad query sees the pads before it and itself (never
    an empty row, so no NaN).
  - block size: the kernel tiles L in blocks that are multiples of 128, so L is padded on the right
    to Lp = ceil(L / 128) * 128 (the extra tokens are segment 0, and causal: real queries never see
    them) and the output sliced back; blocks are the largest of 512 / 256 / 128 dividing Lp.
  - interpret=True runs the kernel through the Pallas interpreter (any backend, e.g. CPU tests);
    the default compiles the Mosaic TPU kernel.
  - sharding: a Mosaic kernel cannot be partitioned by XLA (with batch-sharded inputs and no
    shard_map, the TPU lowering fails: "Mosaic kernels cannot be automatically partitioned. Please
    wrap the call in a shard_map."). So under an abstract mesh with the trainer's ("data", "fsdp")
    axes (`sharding.under_mesh`, as `model.batch_sharded` reads it), the kernel runs under
    jax.shard_map with the batch split over both axes, one shard per device; a batch that does not
    divide over them is padded with all-pad rows (cut off after). Outside such a mesh the inputs
    must be on one device (or replicated).

    attend_after_prefix(impl, q, k, v, key_mask) -> [B, T, H*hd]

the completions of the shared-prefix forward (`model.grouped_hidden_states`): T queries that come
after a left-padded prompt of P slots, over its S = P + T keys (the group's prompt keys, then the
completion's own):

    query t (key index P + t) sees key j   iff   j <= P + t and key_mask[b, j] == 1

splash only (cuDNN's padding masks describe right padding of one sequence; the prompt's pads sit in
the middle of these keys). The same kernel with a rectangular mask: CausalMask((Tp, Pp + Tp),
offset=Pp), the prompt left-padded from P to Pp = ceil(P / 128) * 128 slots and the completion
right-padded from T to Tp (all padding segment 0: no real query sees it), each query in the
segment of its own key (real: 1; a padded query, or a row of an all-pad batch row, sees pad keys,
at least itself: no empty softmax row; its output is cut off). The kernel skips the tiles that lie
wholly above the shifted diagonal.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

IMPLS = ("cudnn", "splash", "dot_product_xla")
SPLASH_LANES = 128  # the splash kernel's sequence tiles are multiples of this
_SPLASH_BLOCKS = (512, 256, 128)  # preferred tile sizes, largest first
_BATCH_AXES = ("data", "fsdp")  # the trainer's mesh axes that shard the batch (grpo_jax.sharding)


def attend(impl: str, q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array, *,
           interpret: bool = False) -> jax.Array:
    """q [B, L, H, hd], k / v [B, L, KV, hd], attention_mask [B, L] (1 = real, 0 = left pad)
    -> [B, L, H*hd] in q's dtype. impl: "cudnn", "splash" or "dot_product_xla" (module docstring).
    interpret: splash only, run the Pallas interpreter instead of the TPU kernel."""
    b, l, h, hd = q.shape
    if k.shape[:2] != (b, l) or k.shape[3] != hd or v.shape != k.shape or not k.shape[2] or h % k.shape[2]:
        raise ValueError(f"attend: q {q.shape} must be [B, L, H, hd] and k, v {k.shape}, {v.shape} "
                         f"[B, L, KV, hd] with H a multiple of KV")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"attend: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if attention_mask.shape != (b, l):
        raise ValueError(f"attend: attention_mask {attention_mask.shape} must be [B, L] = {(b, l)}")
    if impl == "cudnn":
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(f"attention='cudnn' needs bfloat16 (or float16) q/k/v, got {q.dtype}: "
                             f"set the model's compute dtype to bfloat16, or use attention='xla'")
        out = _rolled_dot_product(q, k, v, attention_mask, "cudnn")
    elif impl == "dot_product_xla":
        out = _rolled_dot_product(q, k, v, attention_mask, "xla")
    elif impl == "splash":
        out = _sharded(functools.partial(_splash, interpret=interpret), q, k, v, attention_mask)
    else:
        raise ValueError(f"attend: impl={impl!r}: expected one of {IMPLS}")
    return out.reshape(b, l, h * hd)


# ------------------------------------------------------------------------------ cuDNN (rolled rows)
def _roll_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """x [B, L, ...] -> y[b, i] = x[b, (i + shift[b]) mod L]: row b rotated left by shift[b]."""
    l = x.shape[1]
    idx = (jnp.arange(l, dtype=jnp.int32)[None, :] + shift[:, None]) % l  # [B, L], a permutation per row
    return jnp.take_along_axis(x, idx.reshape(*idx.shape, *([1] * (x.ndim - 2))), axis=1)


def _rolled_dot_product(q, k, v, attention_mask, implementation: str) -> jax.Array:
    l = q.shape[1]
    real = attention_mask.astype(bool)
    n = jnp.sum(real, axis=1, dtype=jnp.int32)  # real tokens per row
    pads = l - n  # left pads per row: the rotation that brings the real tokens to 0 .. n - 1
    lengths = jnp.maximum(n, 1)  # an all-pad row still gets one (pad) key: no empty softmax
    out = jax.nn.dot_product_attention(
        _roll_rows(q, pads), _roll_rows(k, pads), _roll_rows(v, pads), is_causal=True,
        query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation=implementation)
    out = _roll_rows(out, -pads)  # back to the left-padded order ([B, L, H, hd])
    return jnp.where(real[:, :, None, None], out, jnp.zeros((), out.dtype))


# ------------------------------------------------------------------------------ splash (TPU)
def _splash_block(length: int) -> int:
    return next(bs for bs in _SPLASH_BLOCKS if length % bs == 0)


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, q_length: int, kv_length: int, offset: int, interpret: bool):
    """The splash kernel for `heads` query heads over a causal [q_length, kv_length] mask whose query
    i sits at key index i + offset (both lengths multiples of SPLASH_LANES; square with offset 0 for
    `attend`). Cached: building it processes the mask block by block in numpy, and the model calls it
    once per layer with the same shapes. Built under ensure_compile_time_eval so that its mask
    tables are concrete arrays (constants of any program that uses them), never tracers of the
    first trace that asked for it."""
    bq, bkv = _splash_block(q_length), _splash_block(kv_length)
    blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                               block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                               block_q_dq=bq, block_kv_dq=bkv)  # backward blocks set: differentiable
    mask = splash.MultiHeadMask([splash.CausalMask((q_length, kv_length), offset=offset)] * heads)
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)


def _splash(q, k, v, attention_mask, interpret: bool) -> jax.Array:
    """The splash kernel on (a shard of) the batch: q [B, L, H, hd] ... -> [B, L, H, hd]."""
    b, l, h, hd = q.shape
    dtype = q.dtype
    lp = -(-l // SPLASH_LANES) * SPLASH_LANES  # L rounded up to the kernel's tile
    pad = ((0, 0), (0, 0), (0, lp - l), (0, 0))
    # [B, L, heads, hd] -> [B, heads, Lp, hd]; q pre-scaled (the kernel does not scale).
    q = (q.astype(jnp.float32) * hd ** -0.5).astype(dtype)
    q, k, v = (jnp.pad(x.transpose(0, 2, 1, 3), pad) for x in (q, k, v))
    segments = jnp.pad(attention_mask.astype(jnp.int32) != 0, ((0, 0), (0, lp - l))).astype(jnp.int32)
    kernel = _splash_kernel(h, lp, lp, 0, interpret)
    out = jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(q=segments, kv=segments))  # [B, H, Lp, hd]
    return out[:, :, :l].transpose(0, 2, 1, 3).astype(dtype)


def attend_after_prefix(impl: str, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
                        interpret: bool = False) -> jax.Array:
    """q [B, T, H, hd] after a prompt: k / v [B, S, KV, hd] hold the S - T prompt keys then the T
    queries' own; key_mask [B, S] 1 on real keys -> [B, T, H*hd] in q's dtype (module docstring).
    impl: "splash" (interpret: the Pallas interpreter)."""
    b, t, h, hd = q.shape
    s = k.shape[1]
    if k.shape[0] != b or s < t or k.shape[3] != hd or v.shape != k.shape or h % k.shape[2]:
        raise ValueError(f"attend_after_prefix: q {q.shape} must be [B, T, H, hd] and k, v {k.shape}, "
                         f"{v.shape} [B, S >= T, KV, hd] with H a multiple of KV")
    if key_mask.shape != (b, s):
        raise ValueError(f"attend_after_prefix: key_mask {key_mask.shape} must be [B, S] = {(b, s)}")
    if impl != "splash":
        raise ValueError(f"attend_after_prefix: impl={impl!r}: only 'splash' takes a prompt's keys before "
                         f"the queries (cuDNN's masks describe right padding of one sequence)")
    out = _sharded(functools.partial(_splash_after_prefix, interpret=interpret), q, k, v, key_mask)
    return out.reshape(b, t, h * hd)


def _splash_after_prefix(q, k, v, key_mask, interpret: bool) -> jax.Array:
    """The splash kernel, queries after a prompt, on (a shard of) the batch -> [B, T, H, hd]."""
    b, t, h, hd = q.shape
    p = k.shape[1] - t
    dtype = q.dtype
    tp = -(-t // SPLASH_LANES) * SPLASH_LANES  # the completion rounded up to the kernel's tile ...
    pp = -(-p // SPLASH_LANES) * SPLASH_LANES  # ... and the prompt too, by more left padding
    q = (q.astype(jnp.float32) * hd ** -0.5).astype(dtype)  # the kernel does not scale
    q = jnp.pad(q.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, tp - t), (0, 0)))  # [B, H, Tp, hd]
    kv_pad = ((0, 0), (0, 0), (pp - p, tp - t), (0, 0))
    k, v = (jnp.pad(x.transpose(0, 2, 1, 3), kv_pad) for x in (k, v))  # [B, KV, Pp + Tp, hd]
    kv_segments = jnp.pad(key_mask.astype(jnp.int32) != 0, ((0, 0), (pp - p, tp - t))).astype(jnp.int32)
    q_segments = kv_segments[:, pp:]  # a query's segment is its own key's: pad rows see pad keys only
    kernel = _splash_kernel(h, tp, pp + tp, pp, interpret)
    out = jax.vmap(kernel)(q, k, v, segment_ids=splash.SegmentIds(q=q_segments, kv=kv_segments))
    return out[:, :, :t].transpose(0, 2, 1, 3).astype(dtype)  # [B, T, H, hd]


def _sharded(fn, *arrays) -> jax.Array:
    """fn(*arrays) (each [B, ...]), under shard_map over the batch axes when tracing under the
    trainer's mesh: a Mosaic kernel cannot be partitioned by XLA. A batch that does not divide over
    the devices (e.g. the B prompts of a shared-prefix chunk) is padded with zero rows, all-pad
    sequences whose outputs are finite (no empty softmax row) and cut off."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(_BATCH_AXES) <= set(mesh.axis_names):
        return fn(*arrays)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    b = arrays[0].shape[0]
    extra = -b % shards
    if extra:
        arrays = [jnp.pad(x, ((0, extra),) + ((0, 0),) * (x.ndim - 1)) for x in arrays]
    spec = jax.sharding.PartitionSpec(_BATCH_AXES)  # dim 0 over both axes, the rest replicated
    out = jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(arrays), out_specs=spec, check_vma=False)(*arrays)
    return out[:b]
