"""Jitted KV-cache sampler, and the training-side log-probs it must agree with.

Sampling (one jitted program): for N left-padded prompts [N, P] and T = max_new_tokens,
    prefill:  one cached forward over the prompt into a KV cache (positions = cumsum(prompt_mask) - 1,
              so padding changes nothing); logits of the last prompt slot give token 0.
              group_size = G > 1 (GRPO: the N = B * G rows are B prompts each repeated G times,
              group-major, row n = prompt n // G): only the B distinct prompts are prefilled, and their
              cache and last logits are repeated to the G rows of each group (jnp.repeat, then split
              over the mesh like any per-row array) before token 0 is drawn over all N rows as usual:
              same tokens and log-probs as G = 1, (G - 1) / G of the prefill FLOPs saved. Protocol
              models (own cache layout) still prefill all N rows.
    decode:   lax.while_loop, step t >= 1 feeds token t-1 at slot P + t - 1 and position
              sum(prompt_mask) + t - 1, and draws token t from its logits:
                  y_t ~ softmax(filter(logits_t / temperature))
              filter = top-k (keep the k largest) then top-p (keep the smallest set of most likely
              tokens whose mass reaches p; the most likely token is always kept) then min-p (keep
              tokens with prob >= min_p x the most likely one's), as in HF generate; the kept set is
              grpo_jax.truncation.keep_mask (ties at a cut kept together).
              temperature = 0 is greedy: y_t = argmax logits_t (no filter, no randomness).
              Token t of row n is drawn with the key fold_in(fold_in(key, n), t) (`row_keys`): a
              row's stream depends only on (key, row id, position), so the same key gives the same
              samples whatever the batch, the mesh, an early exit, or the engine (lockstep here,
              continuous batching in grpo_jax.continuous). (Until 2026-12-08 step t used one key
              fold_in(key, t) for all rows: the same key gave other samples then.)
    stop:     a row is finished once it has emitted one of eos_id; finished rows stop changing
              (they emit eos_id[0] with mask 0 and logp 0), and the loop exits as soon as every row
              has finished (or after T tokens).
    cache:    for T >= 128 the decode runs in up to 4 segments (`_segment_ends`), segment j over a
              cache of P + ends[j] slots grown between segments, so early steps do not read the
              unwritten end of the cache; T < 128 uses one segment of S = P + T slots, and so does a
              model with scan_layers (the real-model setting: each segment is a copy of every layer
              in the compiled program, 168 s of the Qwen2.5-1.5B sampler's TPU compile with 4).
              With scan_layers the prefill fills a cache of the P prompt slots only, grown to
              P + T after it (its scores are [., H, P, P], not [., H, P, P + T]).
    Rollout.mask[n, t] = 1 for t up to and including the row's first EOS, 0 after.
    logps = False: the per-step token_logps (a log-sum-exp over the vocabulary for every row) is not
    computed and Rollout.logps is all zeros; for callers that recompute the log-probs (training:
    grpo_jax.scoring), so rollout.generate passes it.

Log-prob contract (why sampled and training log-probs agree exactly), s_t = logits_t / temperature
(temperature 0 read as 1: greedy rollouts report log-probs of the temperature-1 distribution):
    truncated_logps = True (training's sampling.truncated_logps, the default there) and top-k / top-p /
    min-p truncating:
        Rollout.logps[n, t] = truncation.truncated_token_logps(logits_t, y_t, ...)
                            = s_t[y_t] - logsumexp over K(s_t) u {y_t} of s_t,   K = truncation.keep_mask
        the log-prob under the truncated, renormalised distribution y_t was actually drawn from (y_t
        is always in K here). The trainer recomputes K from its own forward's logits
        (grpo_jax.scoring.completion_scores(truncation=truncation.for_scoring(config))), so policy,
        old log-probs and behaviour policy are one distribution: exact on-policy GRPO, ratio exactly
        1 at num_iterations = 1. Float round-off between the KV-cache and the full forward can move
        a token at the edge of K; the union with {y_t} keeps every log-prob finite regardless
        (grpo_jax.truncation's docstring).
    otherwise (the sampler's default, and no truncation):
        Rollout.logps[n, t] = grpo_jax.losses.token_logps(logits_t, y_t, temperature=temperature)
                            = log softmax(s_t)[y_t]
        the tempered UNTRUNCATED distribution. With no truncation that is the distribution drawn
        from, and the trainer's function on the same logits. With truncation but
        sampling.truncated_logps = False (the behaviour before 2026-12), the tokens are drawn from
        the truncated distribution but scored on the full one: the ratio at mu = 1 is still 1 (both
        sides use the full distribution) but the behaviour policy is not the reported one (reported
        logps are lower by log of the kept mass), a bias in the policy gradient.
    The KL to the reference is always on the full tempered distribution (the reference is scored
    without truncation).

Sharding: when the prompts arrive sharded over a mesh (NamedSharding), every per-row array (the KV
cache included) is constrained to a sharding of its batch dimension, and the params, whatever their
training layout, are constrained ONCE before the loop to `weight_layout` (config key
sampling.weight_layout, one of WEIGHT_LAYOUTS; on one device nothing changes):
    replicated  (default) gathered whole onto every device; rows split like the prompts. Decode steps
                then run with no collective but the all-rows-finished check, at the cost of one full
                copy of the params per device.
    tensor      tensor-parallel over the mesh axis "fsdp" (sharding.SAMPLE_RULES): the MLP
                intermediate dim, the vocabulary (embedding, LM head) and, when every chip gets whole
                query AND key/value heads (num_heads and num_kv_heads divisible by the fsdp size),
                the attention heads (q/k/v outputs, o_proj's input) are split; the width D is
                replicated. Each chip holds 1/fsdp of those weights; a decode step multiplies its
                slices and all-gathers / all-reduces [N, D]-sized activations, never a weight
                (tests/test_sampling_weights.py checks the compiled loop). The row split is chosen
                so that XLA does not regather head-split weights in the loop (measured on v5e-8):
                with whole heads, rows over the other mesh axes ("data") and the KV cache split by
                KV heads over "fsdp"; otherwise (e.g. 12 / 2 heads on 8 chips) the attention
                projections stay replicated (~1/8 of a Qwen2-style model) and rows are split like the
                prompts, so the KV cache stays split by rows.
    Both give the same tokens, and log-probs equal up to float summation order.
Measured with grpo_jax.plan on a v5e-8 (fsdp = 8), Qwen2.5-1.5B's shape cut to 4 layers (f32
params, bf16 compute, 128 rows, 256 + 512 tokens): sampler peak per chip 2.05 GiB replicated,
0.86 GiB tensor (the full 28 layers: 5.54 GiB replicated, benchmarks/README.md; ~1.5 GiB tensor
extrapolated from 2 and 4 layers, not compiled).

Engines (`sample(engine=...)`, config key sampling.engine): "lockstep" is the loop above (every row of
a call decodes until the last one ends or hits T); "continuous" (grpo_jax.continuous) decodes S slots
refilled from a queue of the rows over a paged KV cache, so finished rows stop costing compute and
cache. The per-row streams above make their samples the same (tokens equal, log-probs to round-off).

Jit: `sample` is a thin Python wrapper over one jitted function whose static arguments are config,
max_new_tokens, top_k, top_p, min_p, the prompt sharding, weight_layout, group_size, logps and
truncated_logps; temperature
and the EOS ids are traced, so changing them (same number of EOS ids) does not recompile.
"""
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax import model as model_lib
from grpo_jax import sharding as sharding_lib
from grpo_jax import truncation
from grpo_jax.losses import token_logps

# Where the sampler keeps the weights on a mesh (config key sampling.weight_layout; module docstring):
# replicated: one full copy per chip; tensor: tensor-parallel over the mesh axis "fsdp".
WEIGHT_LAYOUTS = ("replicated", "tensor")
# Decode engines (config key sampling.engine): lockstep = this module (all rows until the last ends);
# continuous = grpo_jax.continuous (slots refilled from a queue of rows, paged KV cache). Same samples.
ENGINES = ("lockstep", "continuous")


class Rollout(NamedTuple):
    tokens: jax.Array  # i32[N, T] sampled completion tokens; eos_id[0] after a row's first EOS
    mask: jax.Array  # f32[N, T] 1 up to and including the first EOS, 0 after
    # f32[N, T] log-prob of each token: tempered, untruncated (token_logps), or with truncated_logps the
    # truncated, renormalised distribution it was drawn from; 0 where mask = 0
    logps: jax.Array


def row_keys(key: jax.Array, rows: jax.Array, positions: jax.Array) -> jax.Array:
    """The key of token `positions[n]` of row `rows[n]`: fold_in(fold_in(key, row), position).

    Each row's random stream is a function of (the call's key, its row id, the token's index) only,
    never of the batch it decodes in: the lockstep and continuous engines (grpo_jax.continuous) draw
    the same tokens whatever the slot count, the order rows finish in or the mesh."""
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(key, r), t))(rows, positions)


def _choose(logits, keys, temperature, *, trunc: truncation.Truncation) -> tuple[jax.Array, jax.Array]:
    """Next token per row from logits f32[N, V] with per-row keys [N] (`row_keys`): greedy when
    temperature == 0, else sampled from the truncated, renormalised tempered distribution. Returns
    (tokens i32[N], the filtered tempered logits f32[N, V] drawn from: truncation.filter_logits,
    dropped tokens at -inf)."""
    scaled = truncation.filter_logits(logits / jnp.where(temperature > 0, temperature, 1.0), trunc)
    sampled = jax.vmap(jax.random.categorical)(keys, scaled)
    greedy = jnp.argmax(logits, axis=-1)  # the most likely token: always in the kept set
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32), scaled


_SEGMENT_TOKENS = 64


def _segment_ends(t_max: int) -> list[int]:
    """Decode segment boundaries (exclusive token indices): up to 4 equal segments of >= 64 tokens.

    Segment j attends over a cache of P + ends[j] slots instead of all P + T: at batch 64 the full
    cache of the benchmark model passes the 32 MB L3 near S = 288 and each step then streams it from
    DRAM (benchmarks/README.md). 4 segments cut the average cache read to P + 0.625 T for 4 compiled
    loop bodies; masked slots contribute exactly 0 to the softmax, so only float summation order
    changes.
    """
    k = max(1, min(4, t_max // _SEGMENT_TOKENS))
    return [-(-t_max * (j + 1) // k) for j in range(k)]


def _check_prompts(prompt_tokens, prompt_mask):
    """Shapes and dtypes only: runs while tracing, adds nothing to the compiled program."""
    chex.assert_rank(prompt_tokens, 2, custom_message="sample: prompt_tokens must be [N, P]")
    chex.assert_equal_shape([prompt_tokens, prompt_mask],
                            custom_message="sample: prompt_tokens and prompt_mask must both be [N, P]")
    chex.assert_type(prompt_tokens, int, custom_message="sample: prompt_tokens must be integer token ids")


def _whole_heads(config, mesh) -> bool:
    """weight_layout="tensor": can the attention run head-parallel over "fsdp" (every chip whole query
    AND key/value heads)? Our own model only; a protocol model's cache layout is its own."""
    fsdp = mesh.shape["fsdp"]
    return (not model_lib.is_module_model(config) and config.num_heads % fsdp == 0
            and config.num_kv_heads % fsdp == 0)


def _place_params(config, params, mesh, weight_layout: str):
    """The params constrained to the sampler's weight layout on `mesh` (see the module docstring)."""
    if weight_layout == "replicated":
        # One all-gather of the (FSDP-sharded) params here instead of one per decode step.
        replicated = NamedSharding(mesh, PartitionSpec())
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, replicated), params)
    # "tensor": one reshard to the tensor-parallel layout, no full copy of the model anywhere.
    rules = dict(sharding_lib.SAMPLE_RULES)
    if not _whole_heads(config, mesh):  # attention weights replicated, rows split instead (docstring)
        rules["heads"] = rules["kv_heads"] = None
    shardings = sharding_lib.param_shardings(mesh, params, rules=rules)
    return jax.tree.map(jax.lax.with_sharding_constraint, params, shardings)


def _check_group_size(n: int, group_size: int) -> int:
    """B = N // G, the number of distinct prompts; at trace time."""
    if not isinstance(group_size, (int, np.integer)) or group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive int dividing the number of prompt "
                         f"rows N={n} (rows group-major: row n is prompt n // group_size)")
    return n // group_size


def _sample(config, params, prompt_tokens, prompt_mask, key, temperature, eos_ids, *,
            max_new_tokens: int, top_k: int, top_p: float, prompt_sharding, weight_layout: str = "replicated",
            group_size: int = 1, logps: bool = True, min_p: float = 0.0, truncated_logps: bool = False):
    _check_prompts(prompt_tokens, prompt_mask)  # at trace time, for `sample` and `sample_traced` alike
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout={weight_layout!r}: expected one of {WEIGHT_LAYOUTS}")
    trunc = truncation.Truncation(top_k=top_k, top_p=top_p, min_p=min_p)
    # The reported log-probs: of the truncated distribution drawn from, or the full tempered one.
    scored_trunc = trunc if truncated_logps and trunc.active else None
    n, p = prompt_tokens.shape
    b = _check_group_size(n, group_size)
    want_logps = logps  # `logps` below is the [N, T] buffer
    t_max = max_new_tokens
    mesh = None if prompt_sharding is None else prompt_sharding.mesh
    if weight_layout == "tensor" and mesh is not None and "fsdp" not in mesh.axis_names:
        raise ValueError(f"weight_layout='tensor' shards the weights over the mesh axis 'fsdp'; the "
                         f"prompts' mesh has axes {mesh.axis_names}")
    batch_axes = None if mesh is None or not prompt_sharding.spec else prompt_sharding.spec[0]
    head_parallel = weight_layout == "tensor" and mesh is not None and _whole_heads(config, mesh)
    if head_parallel:  # rows over the other mesh axes, the cache's KV heads over "fsdp"
        kept = tuple(a for a in ((batch_axes,) if isinstance(batch_axes, str) else batch_axes or ()) if a != "fsdp")
        batch_axes = kept if len(kept) > 1 else kept[0] if kept else None

    def constrain(x):  # batch-shard any per-row array like the prompts (no-op on one device)
        if mesh is None:
            return x
        spec = PartitionSpec(batch_axes, *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def constrain_cache(x):  # [N, KV, ...]: head-parallel keeps each chip's KV heads
        if not head_parallel:
            return constrain(x)
        spec = PartitionSpec(batch_axes, "fsdp", *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    if not model_lib.is_module_model(config):
        # Every weight enters our model's compute through a cast to config.dtype: cast once here, not
        # in every decode step. The same numbers; bf16 compute then decodes from (and, on a mesh,
        # places) a bf16 copy: half the bytes per step and per chip (7B: 3.5 GiB on 4 chips, not 7).
        params = model_lib.cast_params(params, config.dtype)
    if mesh is not None:
        params = _place_params(config, params, mesh, weight_layout)

    prompt_mask = prompt_mask.astype(jnp.int32)
    positions = model_lib.positions_from_mask(prompt_mask)  # [N, P]
    start = jnp.sum(prompt_mask, axis=-1)  # [N] position of completion token 0
    # Slots P.. are marked real from the start: causality (slot <= query slot) hides unwritten ones.
    kv_mask = constrain(jnp.concatenate([prompt_mask, jnp.ones((n, t_max), jnp.int32)], axis=1))  # [N, S]
    ends = _segment_ends(t_max)
    if model_lib.is_module_model(config):  # a protocol model's cache layout is its own: one segment
        ends = [t_max]
    elif config.scan_layers:  # a real model on an accelerator: one compiled decode loop, not 4 x the layers
        ends = [t_max]
    # Prefill. With group_size G > 1 (and our model) only the B = N / G distinct prompts (row g * G of
    # group g) go through it; their KV cache and last logits are then repeated to the G rows of each
    # group: the same values a prefill over all N rows gives, for 1/G of its FLOPs.
    # (A protocol model's cache layout is its own: it prefills all N rows.) On a mesh the B-row cache
    # is split over the prompts' axes like the N-row one; where B does not divide evenly XLA pads
    # (ceil(B / chips) rows per chip, never more than the N-row prefill's ceil(N / chips)).
    shared = group_size > 1 and not model_lib.is_module_model(config)
    rows = (lambda x: x[::group_size]) if shared else (lambda x: x)  # row g * G: group g's prompt
    # scan_layers (the real-model setting, one decode segment over all P + T slots): the prefill
    # writes and attends over the P prompt slots only, and the segment loop below grows the cache.
    # Over the whole cache its f32 scores would be [B, H, P, P + T], 5 GiB per prompt at DAPO's
    # 2048 + 20480 tokens, for slots that are all masked. The numbers are the same up to float
    # summation order (XLA:CPU reduces P and P + T slots in different orders: 1-ulp log-probs), so
    # the unrolled CPU default keeps its prefill over the first segment's slots and its numbers.
    grows = not model_lib.is_module_model(config) and config.scan_layers
    prefill_slots = p if grows else p + ends[0]
    cache = jax.tree.map(constrain_cache, model_lib.cache_init(config, params, b if shared else n, prefill_slots))
    logits, cache = model_lib.forward_with_cache(config, params, rows(prompt_tokens), rows(positions), cache, 0,
                                               rows(kv_mask[:, :prefill_slots]), last_only=True)  # [B or N, 1, V]
    if shared:  # to the decode loop's N rows, split over the mesh like every other per-row array
        cache = jax.tree.map(lambda x: constrain_cache(jnp.repeat(x, group_size, axis=0)), cache)
        logits = constrain(jnp.repeat(logits, group_size, axis=0))

    pad = eos_ids[0]
    row_ids = constrain(jnp.arange(n, dtype=jnp.int32))

    def emit(t, logits, done, tokens, mask, logps):
        """Draw token t from logits [N, V] for rows not done; record it; update done."""
        tok, filtered = _choose(logits, row_keys(key, row_ids, jnp.full((n,), t, jnp.int32)), temperature,
                                trunc=trunc)
        alive = ~done
        tok = jnp.where(alive, tok, pad)
        tokens = tokens.at[:, t].set(tok)
        mask = mask.at[:, t].set(alive.astype(jnp.float32))
        if want_logps:  # else no vocabulary-wide log-sum-exp per step; the buffer stays 0
            if scored_trunc is None:  # the full tempered distribution
                logp = token_logps(logits, tok, temperature=temperature)
            else:  # = truncation.truncated_token_logps(logits, tok, ...), the trainer's function: tok is in
                # the kept set (drawn from it, or the argmax), so the union with {tok} changes nothing;
                # from the logits already filtered, not a second sort of the vocabulary.
                logp = truncation.filtered_token_logps(filtered, tok)
            logp = jnp.where(alive, logp, 0.0)
            logps = logps.at[:, t].set(logp)
        done = done | (alive & jnp.any(tok[:, None] == eos_ids[None, :], axis=-1))
        return tok, done, tokens, mask, logps

    tokens = constrain(jnp.full((n, t_max), pad, jnp.int32))
    mask = constrain(jnp.zeros((n, t_max), jnp.float32))
    logps = constrain(jnp.zeros((n, t_max), jnp.float32))
    done = constrain(jnp.zeros((n,), bool))
    tok, done, tokens, mask, logps = emit(0, logits[:, -1], done, tokens, mask, logps)

    state = (jnp.int32(1), tok, done, tokens, mask, logps)
    for end in ends:  # one while_loop per segment; segment j's cache holds P + ends[j] slots
        size = p + end
        grow = 0 if model_lib.is_module_model(config) else size - cache[0]["v"].shape[2]
        if grow:  # one copy per segment boundary, then in-place updates again (keys: slots on axis 3)
            cache = [{"k": constrain_cache(jnp.pad(c["k"], ((0, 0), (0, 0), (0, 0), (0, grow)))),
                      "v": constrain_cache(jnp.pad(c["v"], ((0, 0), (0, 0), (0, grow), (0, 0))))} for c in cache]
        segment_mask = kv_mask[:, :size]

        def cond(state, end=end):
            t, _, done, *_ = state
            return (t < end) & ~jnp.all(done)

        def body(state, segment_mask=segment_mask):
            t, tok, done, tokens, mask, logps, cache = state
            # Token t-1 sits at slot P + t - 1 and position start + t - 1; its logits predict token t.
            logits, cache = model_lib.forward_with_cache(
                config, params, tok[:, None], (start + t - 1)[:, None], cache, p + t - 1, segment_mask)
            tok, done, tokens, mask, logps = emit(t, logits[:, 0], done, tokens, mask, logps)
            return t + 1, tok, done, tokens, mask, logps, cache

        *state, cache = jax.lax.while_loop(cond, body, (*state, cache))
    _, _, _, tokens, mask, logps = state
    chex.assert_shape([tokens, mask, logps], (n, t_max))  # Rollout: [N, T] each
    chex.assert_type([tokens, mask, logps], [jnp.int32, jnp.float32, jnp.float32])
    return Rollout(tokens=tokens, mask=mask, logps=logps)


_sample_jit = jax.jit(_sample, static_argnames=("config", "max_new_tokens", "top_k", "top_p", "prompt_sharding",
                                                "weight_layout", "group_size", "logps", "min_p", "truncated_logps"))


def _check_truncation(top_k, top_p, min_p, temperature=0.0):
    if top_k < 0 or not 0.0 < top_p <= 1.0 or not 0.0 <= min_p < 1.0 or temperature < 0:
        raise ValueError(f"need top_k >= 0, 0 < top_p <= 1, 0 <= min_p < 1, temperature >= 0; got top_k={top_k}, "
                         f"top_p={top_p}, min_p={min_p}, temperature={temperature}")


def sample_traced(config: model_lib.ModelConfig, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                  key: jax.Array, *, max_new_tokens: int, eos_id, temperature=1.0, top_k: int = 0,
                  top_p: float = 1.0, group_size: int = 1, logps: bool = True, min_p: float = 0.0,
                  truncated_logps: bool = False) -> Rollout:
    """The un-jitted sampler body, for callers that trace it inside a larger program (jit / vmap,
    e.g. `grpo_jax.sweep`). Same contract as `sample`, but `temperature` may be a traced scalar and
    nothing else is validated or placed (top_k / top_p / min_p are checked: they are static):
    no prompt sharding (one device, or whatever the caller's jit does).
    """
    _check_truncation(top_k, top_p, min_p)
    eos_ids = (int(eos_id),) if np.ndim(eos_id) == 0 else tuple(int(e) for e in eos_id)
    return _sample(config, params, prompt_tokens, prompt_mask, key, jnp.asarray(temperature, jnp.float32),
                   jnp.asarray(eos_ids, jnp.int32), max_new_tokens=int(max_new_tokens), top_k=int(top_k),
                   top_p=float(top_p), prompt_sharding=None, group_size=group_size, logps=bool(logps),
                   min_p=float(min_p), truncated_logps=bool(truncated_logps))


def sample(config: model_lib.ModelConfig, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
           key: jax.Array, *, max_new_tokens: int, eos_id, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, weight_layout: str = "replicated", group_size: int = 1,
           logps: bool = True, min_p: float = 0.0, truncated_logps: bool = False, engine: str = "lockstep",
           slots: int = 0, block_size: int = 16, cache_tokens: int = 0) -> Rollout:
    """Sample T = max_new_tokens tokens for each left-padded prompt (see the module docstring).

    prompt_tokens i32[N, P], prompt_mask [N, P] (1 = real token); eos_id: an int or a tuple of ints
    (ids outside the vocabulary never match: eos_id=-1 disables stopping). temperature 0 = greedy;
    top_k 0 = off; top_p 1.0 = off; min_p 0 = off (keep tokens with prob >= min_p x the most likely
    one's): grpo_jax.truncation, applied in that order. weight_layout: where the params live while
    decoding on a mesh, one of WEIGHT_LAYOUTS (module docstring); no effect on one device.
    group_size G: the rows are B = N / G prompts each repeated G times, group-major (row n is prompt
    n // G, as in GRPO); the prompt is then prefilled once per group (module docstring). Same tokens
    and log-probs as G = 1; N % G != 0 is a ValueError. Static: each value compiles once.
    logps: False skips the per-step log-softmax over the vocabulary; Rollout.logps is then all zeros
    (for callers that recompute log-probs, like training). Static.
    truncated_logps: with top_k / top_p / min_p truncating, Rollout.logps are the log-probs of the
    truncated, renormalised distribution each token was drawn from (truncation.truncated_token_logps,
    what the trainer scores with sampling.truncated_logps); False: of the full tempered distribution
    (losses.token_logps). Static.
    engine: one of ENGINES (config key sampling.engine). "continuous": continuous batching over a
    paged KV cache with `slots` decode slots (0 = N), `block_size`-token blocks and a pool of
    `cache_tokens` tokens (0 = enough that no row is ever preempted): grpo_jax.continuous, the same
    samples (per-row streams), faster where completion lengths are long-tailed. Static.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: expected one of {ENGINES}")
    if engine == "continuous":
        from grpo_jax import continuous  # imports this module

        return continuous.sample(config, params, prompt_tokens, prompt_mask, key, max_new_tokens=max_new_tokens,
                                 eos_id=eos_id, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 group_size=group_size, logps=logps, truncated_logps=truncated_logps, slots=slots,
                                 block_size=block_size, cache_tokens=cache_tokens, weight_layout=weight_layout)[0]
    eos_ids = (int(eos_id),) if np.ndim(eos_id) == 0 else tuple(int(e) for e in eos_id)
    if not eos_ids:
        raise ValueError("eos_id must be an int or a non-empty tuple of ints")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    _check_truncation(top_k, top_p, min_p, temperature)
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout={weight_layout!r}: expected one of {WEIGHT_LAYOUTS}")
    sharding = getattr(prompt_tokens, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
        sharding = None
    return _sample_jit(config, params, prompt_tokens, prompt_mask, key, jnp.float32(temperature),
                       jnp.asarray(eos_ids, jnp.int32), max_new_tokens=int(max_new_tokens),
                       top_k=int(top_k), top_p=float(top_p), prompt_sharding=sharding,
                       weight_layout=weight_layout, group_size=group_size, logps=bool(logps),  # N % G: at trace
                       min_p=float(min_p), truncated_logps=bool(truncated_logps))
