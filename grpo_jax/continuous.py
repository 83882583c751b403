"""Continuous batching over a paged KV cache: a sampler that never waits for the longest completion.

The lockstep sampler (grpo_jax.sampling) decodes all N rows of a call until the last one ends; a
row that ended early holds its compute and its cache to the end. This engine decodes S slots
instead (S <= N) and refills a slot with the next queued row as soon as its row ends, so the
decode steps do useful work until the queue is empty. The same contract as `sampling.sample`
(left-padded prompts [N, P], group-major rows, `Rollout` [N, T]) and THE SAME SAMPLES: each row's
random stream is `sampling.row_keys(key, row, t)`, a function of (key, row id, token index) only,
so the tokens and log-probs equal the lockstep engine's (to float round-off in the logits: the two
attend over the same keys in a different memory layout) whatever S, the block size, the order rows
finish in or the mesh.

Paged cache. The KV cache is a pool of `num_blocks` blocks of `block_size` token slots per layer,
    k [num_blocks, KV, hd, block_size]   (keys transposed, as the lockstep cache)
    v [num_blocks, KV, block_size, hd]
and a block table per slot [S, PB + TB]: PB = ceil(P / block_size) blocks of its prompt, then
TB = T / block_size blocks of its completion, allocated one at a time as the row crosses a block
boundary and returned to the pool when the row ends. The cache's size is a token budget
(`cache_tokens`), not S x (P + T). Block 0 is a scratch block that empty slots write to.

Prompts. One prefill per distinct prompt, as the lockstep sampler: the B = N / G prompts of a call
are prefilled together before the loop (the dense prefill of grpo_jax.model), their KV copied into
B x PB prompt blocks that every row of the group points its table at (prefix sharing: G rows, one
copy), and their last logits kept [B, V]: a row's token 0 is drawn from them when it is admitted.
The prompt blocks stay for the call (B x PB x block_size tokens of the budget).

The loop (one lax.while_loop, static shapes), per iteration:
    admit     empty slots take the lowest-numbered queued rows (in row order), token 0 drawn; no
              more rows than the pool has free blocks for after this step's allocations;
    allocate  a live slot about to write the first token of a block gets a free block; if the pool
              is short, the YOUNGEST live rows are preempted (their blocks freed, their outputs
              cleared, requeued): re-decoded later, they draw the same tokens (per-row streams), so
              preemption changes the time, never the samples. The oldest live row always gets its
              blocks (cache_tokens >= the prompt blocks + one full row is checked), so the loop ends;
    decode    one cached forward over the S slots (each at its own position, attending over its
              own blocks), token t drawn for every live slot;
    retire    a row ends at an EOS id or T tokens; its completion blocks return to the pool.
until every row has ended. `Stats` counts the decode steps and the live slot-steps (utilisation =
live slot-steps / (steps x S)).

Mesh. With prompts sharded over a mesh, each device runs the engine on its own rows with S / D
slots and cache_tokens / D of the budget (jax.shard_map over the prompts' axes; no collective in
the loop; D = the number of devices the rows are split over), weights replicated
(`weight_layout="replicated"`; the tensor-parallel layout is the lockstep engine's only). Row ids
are global, so the samples equal the single-device ones.

Our ModelConfig models only (a protocol model's cache layout is its own: lockstep).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax import model as model_lib
from grpo_jax import sampling
from grpo_jax import truncation
from grpo_jax.losses import token_logps

QUEUED, LIVE, DONE = 0, 1, 2


class Stats(NamedTuple):
    steps: jax.Array  # i32[D] decode steps run (per device on a mesh)
    slot_steps: jax.Array  # i32[D] live slot-steps: useful work (one generated token each)
    slots: int  # S, slots over all devices
    preempted: jax.Array  # i32[D] rows preempted (re-decoded later)


def prompt_blocks(prompt_length: int, block_size: int) -> int:
    """PB: blocks holding one left-padded prompt of `prompt_length` tokens."""
    return -(-prompt_length // block_size)


def min_cache_tokens(num_prompts: int, prompt_length: int, max_new_tokens: int, block_size: int) -> int:
    """The smallest token budget the engine runs with: the scratch block, every prompt's blocks and
    one full row's completion blocks (the oldest row can then always finish)."""
    return block_size * (1 + num_prompts * prompt_blocks(prompt_length, block_size)) + max_new_tokens


def check(*, num_rows: int, num_prompts: int, prompt_length: int, max_new_tokens: int, slots: int,
          block_size: int, cache_tokens: int, devices: int = 1, prefix: str = "sampling") -> None:
    """ValueError naming the config key (`prefix`.slots / .block_size / .cache_tokens) for a shape the
    engine cannot run; per device where the rows are split over `devices`."""
    if block_size < 1 or max_new_tokens % block_size:
        raise ValueError(f"config key `{prefix}.block_size` = {block_size} must be >= 1 and divide the maximum "
                         f"completion length (sampling.max_new_tokens = {max_new_tokens})")
    if slots < 1 or slots % devices:
        raise ValueError(f"config key `{prefix}.slots` = {slots} must be a positive multiple of the {devices} "
                         f"device(s) the rows are split over")
    if num_rows % devices:
        raise ValueError(f"the continuous engine splits the {num_rows} rows over {devices} devices: not a multiple")
    need = min_cache_tokens(num_prompts, prompt_length, max_new_tokens, block_size)
    if cache_tokens % devices or cache_tokens // devices < need:
        raise ValueError(
            f"config key `{prefix}.cache_tokens` = {cache_tokens} is too small: each of the {devices} device(s) "
            f"needs at least {need} tokens (one scratch block of {block_size}, {num_prompts} prompt(s) of "
            f"{prompt_length} tokens in blocks of {block_size}, and one full completion of {max_new_tokens})")


def default_cache_tokens(num_prompts: int, prompt_length: int, max_new_tokens: int, block_size: int,
                         slots: int) -> int:
    """The budget with which no row is ever preempted: every slot can hold a full completion."""
    return (block_size * (1 + num_prompts * prompt_blocks(prompt_length, block_size))
            + slots * max_new_tokens)


def resolve(*, rows: int, prompt_length: int, max_new_tokens: int, group_size: int, devices: int, slots: int,
            block_size: int, cache_tokens: int) -> tuple[int, int, int]:
    """(slots, cache_tokens, prompts per device) of a call of `rows` rows split over `devices`: slots
    0 = one per row and at most the rows; cache_tokens 0 = `default_cache_tokens` per device; a group
    split over devices prefills each of its rows (G = 1 there). The one place these are decided
    (`sample` and grpo_jax.plan)."""
    slots = min(slots, rows) if slots > 0 else (slots or rows)
    local = rows // devices if rows % devices == 0 else rows
    prompts = local // group_size if local % group_size == 0 else local
    budget = cache_tokens or devices * default_cache_tokens(prompts, prompt_length, max_new_tokens, block_size,
                                                            max(slots // devices, 1))
    return slots, budget, prompts


# Keys per step of the paged attention's loop: a chunk of ATTENTION_CHUNK_TOKENS // block_size blocks.
ATTENTION_CHUNK_TOKENS = 128


def paged_attention(q, pool_k, pool_v, table, valid, num_chunks, chunk: int):
    """softmax(q k^T / sqrt(hd)) v over each slot's blocks, read from the pool in place.

    q [S, KV, R, hd] (R = query heads per KV head); pool_k [NB, KV, hd, bs], pool_v [NB, KV, bs, hd];
    table i32[S, C * n] (each slot's blocks, `chunk` = C per loop step); valid(first_key) -> bool[S,
    C * bs]: which of the chunk's keys slot s attends to; num_chunks: the loop's (traced) trip count,
    enough for the longest live slot. An online softmax over chunks (running max, sum, accumulator in
    f32), so a step reads each slot's keys once and only as far as the longest live row, never the
    whole table: the same maths as model._softmax_attention_fwd up to float summation order.
    Returns [S, KV, R, hd]."""
    s, kv, r, hd = q.shape
    bs = pool_k.shape[-1]
    scale = hd ** -0.5
    neg = jnp.finfo(jnp.float32).min

    def step(c, carry):
        m, l, acc = carry
        blocks = jax.lax.dynamic_slice_in_dim(table, c * chunk, chunk, axis=1)  # [S, C]
        k = pool_k[blocks]  # [S, C, KV, hd, bs]
        v = pool_v[blocks]  # [S, C, KV, bs, hd]
        scores = jnp.einsum("skrd,sckdb->skrcb", q, k, preferred_element_type=jnp.float32) * scale
        scores = scores.reshape(s, kv, r, chunk * bs)
        scores = jnp.where(valid(c * chunk * bs)[:, None, None, :], scores, neg)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        correction = jnp.exp(m - m_new)
        probs = jnp.exp(scores - m_new[..., None])
        l = l * correction + jnp.sum(probs, axis=-1)
        pv = jnp.einsum("skrcb,sckbd->skrd", probs.reshape(s, kv, r, chunk, bs).astype(v.dtype), v,
                        preferred_element_type=jnp.float32)
        return m_new, l, acc * correction[..., None] + pv

    init = (jnp.full((s, kv, r), neg, jnp.float32), jnp.zeros((s, kv, r), jnp.float32),
            jnp.zeros((s, kv, r, hd), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, num_chunks, step, init)
    return (acc / l[..., None]).astype(q.dtype)


def paged_forward(config: model_lib.ModelConfig, params: dict, tokens, positions, pool, write_block,
                  write_offset, table, valid, num_chunks, chunk: int):
    """One decode step over S slots on the paged pool.

    tokens / positions i32[S]; pool: per layer {"k": [NB, KV, hd, bs], "v": [NB, KV, bs, hd]};
    write_block / write_offset i32[S]: where each slot's new key / value goes (written before the
    attention: a token sees itself); table, valid, num_chunks, chunk: `paged_attention`'s.
    Returns (logits f32[S, V], new pool). The same layer maths as model.apply_with_cache."""
    s = tokens.shape[0]
    dtype = jnp.dtype(config.dtype)
    x = model_lib._cast(params["embed_tokens"]["embedding"][tokens[:, None]], dtype)  # [S, 1, D]
    ls = config.lora_alpha / max(config.lora_rank, 1)
    kv, hd = config.num_kv_heads, config.head_dim
    r = config.num_heads // kv
    new_pool = []
    for p, layer in zip(params["layers"], pool):
        q, k, v = model_lib._qkv(config, p, x, positions[:, None])  # q [S, 1, H, hd], k / v [S, 1, KV, hd]
        pk = layer["k"].at[write_block, :, :, write_offset].set(k[:, 0].astype(layer["k"].dtype))
        pv = layer["v"].at[write_block, :, write_offset, :].set(v[:, 0].astype(layer["v"].dtype))
        new_pool.append({"k": pk, "v": pv})
        out = paged_attention(q.reshape(s, kv, r, hd), pk, pv, table, valid, num_chunks, chunk)  # HF repeat_kv order
        x = x + model_lib._linear(p["self_attn"]["o_proj"], out.reshape(s, 1, kv * r * hd), dtype, ls)
        x = model_lib._mlp_residual(config, p, x, dtype, ls)
    return model_lib.lm_head(config, params, x)[:, 0], new_pool


def _engine(config, params, prompt_tokens, prompt_mask, key, temperature, eos_ids, row_offset, *,
            max_new_tokens: int, trunc: truncation.Truncation, scored_trunc, group_size: int, want_logps: bool,
            slots: int, block_size: int, cache_tokens: int):
    """The engine on one device's rows (module docstring). row_offset: the global id of row 0 here."""
    n, p = prompt_tokens.shape
    t_max, bs, s_count = max_new_tokens, block_size, slots
    g = group_size if n % group_size == 0 else 1  # rows of a group split over devices: prefill each row
    b = n // g
    pb, tb = prompt_blocks(p, bs), t_max // bs
    chunk = max(1, ATTENTION_CHUNK_TOKENS // bs)  # blocks per step of the attention loop
    mb = -(-(pb + tb) // chunk) * chunk  # table columns: whole chunks
    num_blocks = cache_tokens // bs
    pad = eos_ids[0]

    # Prefill the B distinct prompts densely, then copy their KV into blocks 1 .. B * PB.
    prompt_mask = prompt_mask.astype(jnp.int32)
    pslots = pb * bs
    pmask = jnp.pad(prompt_mask, ((0, 0), (0, pslots - p)))  # [N, PB * bs]
    first = lambda x: x[::g]  # noqa: E731  row j * G: prompt j
    dense = model_lib.init_cache(config, b, pslots)
    positions = model_lib.positions_from_mask(prompt_mask)
    # the P prompt slots of a PB * bs-slot cache; logits of the last one (prompts are left-padded to P)
    logits0, dense = model_lib.apply_with_cache(config, params, first(prompt_tokens), first(positions), dense, 0,
                                                first(pmask), last_only=True)
    prompt_logits = logits0[:, 0]  # [B, V]
    dtype = dense[0]["k"].dtype
    pool = []
    for layer in dense:
        k = layer["k"].reshape(b, config.num_kv_heads, config.head_dim, pb, bs).transpose(0, 3, 1, 2, 4)
        v = layer["v"].reshape(b, config.num_kv_heads, pb, bs, config.head_dim).transpose(0, 2, 1, 3, 4)
        pk = jnp.zeros((num_blocks, config.num_kv_heads, config.head_dim, bs), dtype)
        pv = jnp.zeros((num_blocks, config.num_kv_heads, bs, config.head_dim), dtype)
        pool.append({"k": pk.at[1:1 + b * pb].set(k.reshape(b * pb, *k.shape[2:])),
                     "v": pv.at[1:1 + b * pb].set(v.reshape(b * pb, *v.shape[2:]))})
    # A slot's table starts with its prompt's blocks that hold real tokens (a left-padded prompt's
    # leading all-padding blocks are skipped: attention is over a set of keys, RoPE already placed
    # them), then its completion's blocks: a slot reads npb + idx // bs + 1 blocks, not PB + TB.
    start = jnp.sum(prompt_mask, axis=-1)  # [N] prompt length = position of completion token 0
    plen = first(start)  # [B]
    fb = (p - plen) // bs  # [B] first prompt block holding a real token
    npb = pb - fb  # [B] prompt blocks a slot reads
    cols = jnp.arange(mb)[None, :]
    prompt_table = jnp.where(cols < npb[:, None],
                             1 + jnp.arange(b)[:, None] * pb + jnp.minimum(fb[:, None] + cols, pb - 1), 0)  # [B, MB]
    free0 = jnp.arange(num_blocks) >= 1 + b * pb  # completion blocks

    def draw(rows, ts, logits):
        """Tokens ts [S] of rows [S] from logits [S, V] (per-row streams) and their log-probs."""
        keys = sampling.row_keys(key, row_offset + rows, ts)
        tok, filtered = sampling._choose(logits, keys, temperature, trunc=trunc)
        if not want_logps:
            return tok, jnp.zeros(tok.shape, jnp.float32)
        if scored_trunc is None:
            return tok, token_logps(logits, tok, temperature=temperature)
        return tok, truncation.filtered_token_logps(filtered, tok)

    def record(out, rows, ts, live, tok, logp):
        tokens, mask, logps = out
        r = jnp.where(live, rows, n)  # out of range: dropped
        tokens = tokens.at[r, ts].set(tok, mode="drop")
        mask = mask.at[r, ts].set(1.0, mode="drop")
        logps = logps.at[r, ts].set(logp, mode="drop")
        return tokens, mask, logps

    def ended(tok, ts):
        return jnp.any(tok[:, None] == eos_ids[None, :], axis=-1) | (ts + 1 >= t_max)

    def release(free, table, slot_row, slots_mask):
        """Return the completion blocks of the slots in slots_mask to the pool."""
        own = cols >= npb[jnp.clip(slot_row, 0, n - 1) // g][:, None]  # columns past the prompt's
        ids = jnp.where(slots_mask[:, None] & own & (table > 0), table, num_blocks).reshape(-1)  # never block 0
        return free.at[ids].set(True, mode="drop")

    def cond(st):
        return jnp.any(st["row_state"] != DONE)

    def body(st):
        row_state, slot_row, slot_t, slot_tok = st["row_state"], st["slot_row"], st["slot_t"], st["slot_tok"]
        table, free, stamp, out = st["table"], st["free"], st["stamp"], st["out"]
        # --- admit: the k-th empty slot takes the k-th queued row (in row order)
        empty = slot_row < 0
        queued = row_state == QUEUED
        order = jnp.argsort(~queued, stable=True)  # queued rows first, by id
        k = jnp.cumsum(empty) - 1
        # no more new rows than free blocks beyond those the live slots take this step: an admission
        # never forces a preemption at once (the pool's watermark)
        live_need = jnp.sum((slot_row >= 0) & ((slot_t - 1) % bs == 0))
        take = empty & (k < jnp.minimum(jnp.sum(queued), jnp.sum(free) - live_need))
        new_row = jnp.where(take, order[jnp.clip(k, 0, n - 1)], -1)
        logits = prompt_logits[jnp.clip(new_row, 0, n - 1) // g]
        tok0, lp0 = draw(jnp.maximum(new_row, 0), jnp.zeros((s_count,), jnp.int32), logits)
        tok0 = jnp.where(take, tok0, pad)
        out = record(out, new_row, jnp.zeros((s_count,), jnp.int32), take, tok0, jnp.where(take, lp0, 0.0))
        done0 = take & ended(tok0, jnp.zeros((s_count,), jnp.int32))
        row_state = row_state.at[jnp.where(take, new_row, n)].set(
            jnp.where(done0, DONE, LIVE), mode="drop")
        admitted = take & ~done0
        slot_row = jnp.where(admitted, new_row, jnp.where(take, -1, slot_row))
        slot_t = jnp.where(admitted, 1, slot_t)
        slot_tok = jnp.where(admitted, tok0, slot_tok)
        stamp = jnp.where(admitted, st["clock"] + jnp.cumsum(admitted), stamp)
        clock = st["clock"] + jnp.sum(admitted)
        prompt_of = jnp.clip(slot_row, 0, n - 1) // g  # [S] the slot's prompt
        table = jnp.where(admitted[:, None], prompt_table[prompt_of], table)

        # --- allocate: a live slot writing the first token of a block needs one; preempt the youngest
        def needs(slot_row, slot_t):
            return (slot_row >= 0) & ((slot_t - 1) % bs == 0)

        def short(c):
            slot_row, slot_t, *_ = c
            return jnp.sum(needs(slot_row, slot_t)) > jnp.sum(c[3])

        def preempt(c):
            slot_row, slot_t, table, free, row_state, out, count = c
            victim = jnp.argmax(jnp.where(slot_row >= 0, stamp, -1))
            free = release(free, table, slot_row, jnp.arange(s_count) == victim)
            row = slot_row[victim]
            row_state = row_state.at[row].set(QUEUED)
            tokens, mask, logps = out
            out = (tokens.at[row].set(pad), mask.at[row].set(0.0), logps.at[row].set(0.0))
            return (slot_row.at[victim].set(-1), slot_t, table, free, row_state, out, count + 1)

        slot_row, slot_t, table, free, row_state, out, preempted = jax.lax.while_loop(
            short, preempt, (slot_row, slot_t, table, free, row_state, out, st["preempted"]))
        need = needs(slot_row, slot_t)
        free_ids = jnp.argsort(~free, stable=True)
        got = free_ids[jnp.clip(jnp.cumsum(need) - 1, 0, num_blocks - 1)]
        got = jnp.where(need, got, num_blocks)
        free = free.at[got].set(False, mode="drop")
        column = npb[prompt_of] + (slot_t - 1) // bs
        table = jnp.where(need[:, None] & (cols == column[:, None]), got[:, None], table)

        # --- decode one step for the live slots
        live = slot_row >= 0
        row = jnp.clip(slot_row, 0, n - 1)
        idx = slot_t - 1  # completion index of the token fed now
        write_block = jnp.where(live, jnp.take_along_axis(table, jnp.clip(column, 0, mb - 1)[:, None], 1)[:, 0], 0)
        write_offset = jnp.where(live, idx % bs, 0)
        prompt_keys = npb[prompt_of] * bs  # [S] keys of the table's prompt part (some padding)
        first_key = fb[prompt_of] * bs  # [S] the dense prompt slot of key 0
        pad_before = p - plen[prompt_of]  # [S] left padding: dense prompt slots < this are not real

        def valid(k0):  # keys k0 .. k0 + chunk * bs - 1 of each slot's table: real and not in the future
            k = k0 + jnp.arange(chunk * bs)[None, :]
            dense = first_key[:, None] + k
            in_prompt = (dense >= pad_before[:, None]) & (dense < p)
            return jnp.where(k < prompt_keys[:, None], in_prompt, k - prompt_keys[:, None] <= idx[:, None])

        longest = jnp.max(jnp.where(live, prompt_keys + idx + 1, 1))
        num_chunks = -(-longest // (chunk * bs))
        logits, pool = paged_forward(config, params, slot_tok, start[row] + idx, st["pool"], write_block,
                                     write_offset, table, valid, num_chunks, chunk)
        tok, lp = draw(row, slot_t, logits)
        tok = jnp.where(live, tok, pad)
        out = record(out, slot_row, slot_t, live, tok, jnp.where(live, lp, 0.0))
        fin = live & ended(tok, slot_t)
        free = release(free, table, slot_row, fin)
        row_state = row_state.at[jnp.where(fin, slot_row, n)].set(DONE, mode="drop")
        return {"row_state": row_state, "slot_row": jnp.where(fin, -1, slot_row), "slot_t": slot_t + 1,
                "slot_tok": tok, "table": table, "free": free, "stamp": stamp, "clock": clock, "out": out,
                "pool": pool, "steps": st["steps"] + 1, "slot_steps": st["slot_steps"] + jnp.sum(live),
                "preempted": preempted}

    out = (jnp.full((n, t_max), pad, jnp.int32), jnp.zeros((n, t_max), jnp.float32),
           jnp.zeros((n, t_max), jnp.float32))
    st = {"row_state": jnp.zeros((n,), jnp.int32), "slot_row": jnp.full((s_count,), -1, jnp.int32),
          "slot_t": jnp.zeros((s_count,), jnp.int32), "slot_tok": jnp.full((s_count,), pad, jnp.int32),
          "table": jnp.zeros((s_count, mb), jnp.int32), "free": free0, "stamp": jnp.zeros((s_count,), jnp.int32),
          "clock": jnp.int32(0), "out": out, "pool": pool, "steps": jnp.int32(0), "slot_steps": jnp.int32(0),
          "preempted": jnp.int32(0)}
    st = jax.lax.while_loop(cond, body, st)
    tokens, mask, logps = st["out"]
    return sampling.Rollout(tokens=tokens, mask=mask, logps=logps), st["steps"], st["slot_steps"], st["preempted"]


def _batch_axes(sharding) -> tuple:
    if sharding is None or not sharding.spec or sharding.spec[0] is None:
        return ()
    axes = sharding.spec[0]
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _sample(config, params, prompt_tokens, prompt_mask, key, temperature, eos_ids, *, max_new_tokens, top_k,
            top_p, min_p, prompt_sharding, group_size, logps, truncated_logps, slots, block_size, cache_tokens):
    sampling._check_prompts(prompt_tokens, prompt_mask)
    trunc = truncation.Truncation(top_k=top_k, top_p=top_p, min_p=min_p)
    scored_trunc = trunc if truncated_logps and trunc.active else None
    params = model_lib.cast_params(params, config.dtype)
    axes = _batch_axes(prompt_sharding)
    devices = int(np.prod([prompt_sharding.mesh.shape[a] for a in axes])) if axes else 1
    kw = dict(max_new_tokens=max_new_tokens, trunc=trunc, scored_trunc=scored_trunc, group_size=group_size,
              want_logps=logps, slots=slots // devices, block_size=block_size, cache_tokens=cache_tokens // devices)
    if not axes:
        out, steps, slot_steps, preempted = _engine(config, params, prompt_tokens, prompt_mask, key, temperature,
                                                    eos_ids, jnp.int32(0), **kw)
        return out, Stats(steps[None], slot_steps[None], slots, preempted[None])
    mesh = prompt_sharding.mesh
    rows = PartitionSpec(axes)
    n_local = prompt_tokens.shape[0] // devices
    params = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec())), params)

    def local(params, ptok, pmask, key, temperature, eos_ids):
        offset = jax.lax.axis_index(axes) * n_local
        out, steps, slot_steps, preempted = _engine(config, params, ptok, pmask, key, temperature, eos_ids,
                                                    offset.astype(jnp.int32), **kw)
        return out, steps[None], slot_steps[None], preempted[None]

    out, steps, slot_steps, preempted = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), rows, rows, PartitionSpec(), PartitionSpec(), PartitionSpec()),
        out_specs=(sampling.Rollout(rows, rows, rows), rows, rows, rows), check_vma=False,
    )(params, prompt_tokens, prompt_mask, key, temperature, eos_ids)
    return out, Stats(steps, slot_steps, slots, preempted)


_sample_jit = jax.jit(_sample, static_argnames=(
    "config", "max_new_tokens", "top_k", "top_p", "min_p", "prompt_sharding", "group_size", "logps",
    "truncated_logps", "slots", "block_size", "cache_tokens"))


def sample(config: model_lib.ModelConfig, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
           key: jax.Array, *, max_new_tokens: int, eos_id, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, min_p: float = 0.0, group_size: int = 1, logps: bool = True,
           truncated_logps: bool = False, slots: int = 0, block_size: int = 16, cache_tokens: int = 0,
           weight_layout: str = "replicated") -> tuple[sampling.Rollout, Stats]:
    """`sampling.sample`'s contract with continuous batching (module docstring): returns
    (Rollout [N, T], Stats). slots S: 0 = N (every row its own slot; no queue), at most N; block_size must
    divide max_new_tokens; cache_tokens: the pool's token budget over all devices, 0 =
    `default_cache_tokens` (no preemption ever). Static: slots, block_size, cache_tokens."""
    if model_lib.is_module_model(config):
        raise ValueError("the continuous engine runs our ModelConfig models; a protocol (NNX) model samples "
                         "with sampling.engine='lockstep'")
    eos_ids = (int(eos_id),) if np.ndim(eos_id) == 0 else tuple(int(e) for e in eos_id)
    if not eos_ids:
        raise ValueError("eos_id must be an int or a non-empty tuple of ints")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    sampling._check_truncation(top_k, top_p, min_p, temperature)
    n, p = prompt_tokens.shape
    sampling._check_group_size(n, group_size)
    sharding = getattr(prompt_tokens, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
        sharding = None
    if sharding is not None and weight_layout != "replicated":
        raise ValueError(f"config key `sampling.weight_layout` = {weight_layout!r}: the continuous engine keeps "
                         f"the weights replicated; use sampling.engine='lockstep' for the tensor layout")
    axes = _batch_axes(sharding)
    devices = int(np.prod([sharding.mesh.shape[a] for a in axes])) if axes else 1
    slots, cache_tokens, prompts = resolve(rows=n, prompt_length=p, max_new_tokens=max_new_tokens,
                                           group_size=group_size, devices=devices, slots=slots,
                                           block_size=block_size, cache_tokens=cache_tokens)
    check(num_rows=n, num_prompts=prompts, prompt_length=p, max_new_tokens=max_new_tokens,
          slots=slots, block_size=block_size, cache_tokens=cache_tokens, devices=devices)
    return _sample_jit(config, params, prompt_tokens, prompt_mask, key, jnp.float32(temperature),
                       jnp.asarray(eos_ids, jnp.int32), max_new_tokens=int(max_new_tokens), top_k=int(top_k),
                       top_p=float(top_p), min_p=float(min_p), prompt_sharding=sharding, group_size=group_size,
                       logps=bool(logps), truncated_logps=bool(truncated_logps), slots=int(slots),
                       block_size=int(block_size), cache_tokens=int(cache_tokens))
