"""Decoder-only transformer of the Llama 2/3 / Qwen2 / Qwen3 / SmolLM2 family, as pure functions on a
dict of arrays.

    h_0     = embed_tokens[tokens]
    a_l     = h_l + o_proj(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))),  n = RMSNorm(h_l)
              (Qwen3, qk_norm=True: RoPE(RMSNorm_hd(q_proj(n))), RoPE(RMSNorm_hd(k_proj(n))))
    h_{l+1} = a_l + down_proj(silu(gate_proj(m)) * up_proj(m)),                       m = RMSNorm(a_l)
    logits  = RMSNorm(h_L) @ lm_head          (lm_head = embed_tokens.T when tie_embeddings)

- RMSNorm: x * rsqrt(mean(x^2) + eps) * scale, computed in f32 and cast back to the compute dtype.
- RoPE: Hugging Face "rotate_half" convention (the two halves of head_dim are the (re, im) pairs,
  NOT interleaved pairs), inv_freq_i = rope_theta^(-2i / head_dim), angles computed in f32.
  Llama 3.x (rope_scaling=RopeScaling(...), HF rope_type "llama3"): with wavelength w_i = 2 pi / inv_freq_i,
  L = original_max_position_embeddings, inv_freq_i is kept where w_i < L / high_freq_factor, divided by
  `factor` where w_i > L / low_freq_factor, and in between interpolated as (1 - s) inv_freq_i / factor +
  s inv_freq_i, s = (L / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor).
- Qwen3 (qk_norm=True): after q_proj / k_proj and BEFORE RoPE, each head's query and key vector is
  RMS-normalised over head_dim with its own scale (q_norm / k_norm, [head_dim], shared by the heads).
- GQA: num_heads query heads share num_kv_heads key/value heads (groups of num_heads // num_kv_heads
  consecutive query heads, as in HF's repeat_kv).
- Optional q/k/v bias (Qwen2: attention_bias=True; Qwen3 and Llama have none); o_proj never has a bias.
- Two dtypes, as Flax's param_dtype / dtype and MaxText's weight_dtype / dtype:
    param_dtype ("float32" default, or "bfloat16"): the dtype params are created, stored, loaded in
        and optimised in (so also the Adam moments). Keep it f32 for training: one Adam step at lr
        1e-6 on bf16 weights of scale 0.02 changes only ~2% of them (the rest round away).
    dtype ("float32" default, or "bfloat16"): the compute dtype. Every weight enters the compute
        through a cast to it (`_linear` kernels and biases, the embedding lookup, the LM head, norm
        scales), and so do the activations: the residual stream and the KV cache are in it. The casts
        are skipped when the dtypes already match (f32/f32 compiles to exactly the program without
        them). Norms (f32 inside, output in the input's dtype), RoPE angles, attention scores /
        softmax and the logits stay f32.
  `cast_params(params, dtype)` casts a params tree once (e.g. a frozen reference policy stored in
  the compute dtype): the in-layer casts are then no-ops and every number is the same.

Two front ends, one implementation: the functional core (`init_params`, `apply`, `apply_with_cache`
over the dict layout below, which the weights loader maps Hugging Face tensors onto), and Flax NNX
modules at the end of this file (`CausalLM`, whose state is that layout and whose methods call the
core), plus the small protocol any NNX causal LM meets to be trained and sampled here.

PARAM LAYOUT (a plain nested dict; kernels stored [in, out], i.e. HF's Linear weight transposed):

    {"embed_tokens": {"embedding": [V, D]},
     "layers": [ {                                   # a Python list, one dict per layer
         "input_layernorm": {"scale": [D]},
         "self_attn": {"q_proj": {"kernel": [D, H*hd], "bias": [H*hd]},   # bias only if attention_bias
                       "k_proj": {"kernel": [D, KV*hd], "bias": [KV*hd]},
                       "v_proj": {"kernel": [D, KV*hd], "bias": [KV*hd]},
                       "o_proj": {"kernel": [H*hd, D]},
                       "q_norm": {"scale": [hd]}, "k_norm": {"scale": [hd]}},      # only if qk_norm
         "post_attention_layernorm": {"scale": [D]},
         "mlp": {"gate_proj": {"kernel": [D, I]}, "up_proj": {"kernel": [D, I]},
                 "down_proj": {"kernel": [I, D]}}}, ... ],
     "norm": {"scale": [D]},
     "lm_head": {"kernel": [D, V]}}                  # absent when tie_embeddings

Padding and positions: attention_mask [B, L] has 1 on real tokens and 0 on (left) padding.
positions = cumsum(mask) - 1, clipped at 0, so a left-padded row sees exactly the positions of the
unpadded row; keys are masked causally AND by padding. A pad query whose keys are all masked gets a
finite uniform softmax (masked scores are finfo.min, never -inf), so no NaN appears anywhere.

KV-cache decode path (used by grpo_jax.sampling for prefill and single-token decode):
    cache = init_cache(config, batch_size, max_len)
        a list (one entry per layer) of {"k": [B, KV, hd, S], "v": [B, KV, S, hd]}, S = max_len slots
        (KV heads before slots, and keys stored transposed: both attention matmuls then read the
        cache in plain matmul layout with no transpose. q @ k^T on [B, KV, S, hd] keys was 2.3-4.3x
        slower per decode step at S = 96-512 on XLA:CPU: benchmarks/kv_layout.py).
    logits, cache = apply_with_cache(config, params, tokens, positions, cache, cache_index, kv_mask)
        tokens/positions [B, L] are written to slots cache_index .. cache_index + L - 1 (the same
        slots for every row: rows are aligned by slot, not by position, which is why prompts are
        left-padded). Query l attends to slot s iff s <= cache_index + l (causal in slot order) and
        kv_mask[b, s] == 1. kv_mask [B, S] marks slots holding real tokens; slots not written yet may
        be marked 1 already (causality hides them), so a sampler can pass
        concat(prompt_mask, ones) once for the whole decode. last_only=True returns only the last
        position's logits (prefill).
Also public: hidden_states(config, params, tokens, *, attention_mask) -> [B, L, D] and
lm_head(config, params, hidden) -> f32[B, L, V] (apply = lm_head(hidden_states)), so a caller can
slice positions before the V-wide matmul; positions_from_mask(mask) -> i32[B, L];
grouped_hidden_states(config, params, prompt_tokens [B, P], prompt_mask, completion_tokens [B*G, T],
group_size) -> (prompt_hidden [B, P, D], completion_hidden [B*G, T, D]): the same hidden states with
each prompt encoded once for its G completions (GRPO's shared-prefix forward).
The layer loop is a Python loop (unrolled at trace time) over per-layer caches: measured ~4x faster
decode on CPU than stacked layers under lax.scan (ENVIRONMENT.md), because each layer's cache update
stays an in-place dynamic_update_slice.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16")  # the dtypes params and compute may take
# LoRA targets by their short names (config model.lora_targets) -> where the projection sits in a layer.
LORA_TARGETS = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
                "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
                "down": ("mlp", "down_proj")}
ROPE_SCALING_TYPES = ("llama3",)  # the RoPE scaling types the model implements (HF rope_type)
# What each layer keeps for the backward (config model.remat), as jax.checkpoint policies:
#   none: no rematerialisation, autodiff keeps every intermediate (fastest; most memory)
#   full: keep only each layer's input, recompute the whole layer in the backward (least memory)
#   dots: keep the weight matmuls' outputs (no batch dims), recompute the elementwise work and attention
#   dots_with_batch: keep every matmul output, attention's included
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "dots_with_batch": jax.checkpoint_policies.dots_saveable}
# Attention kernels for the training forward (config model.attention); the decode cache path is always "xla".
#   xla: ours (`_softmax_attention`, hand-written VJP; the fast one on CPU)
#   cudnn: jax.nn.dot_product_attention's cuDNN flash attention (NVIDIA GPUs)
#   splash: the Pallas splash-attention kernel (TPU)
#   splash_interpret: the same kernel run by the Pallas interpreter (any backend, slow: tests on CPU)
ATTENTION_IMPLS = ("xla", "cudnn", "splash", "splash_interpret")
# The config's model.attention also takes "auto": the kernel of the run's backend (`resolve_attention`).
ATTENTION_CHOICES = ATTENTION_IMPLS + ("auto",)
# Kernels compiled for one backend only (jax platform names: jax.default_backend(), or the platform a
# plan compiles for). Anywhere else they fail deep inside the first compile, so the config refuses them.
ATTENTION_BACKENDS = {"cudnn": ("gpu", "cuda"), "splash": ("tpu",)}


def resolve_attention(name: str, *, platform: str, dtype: str) -> str:
    """model.attention for a run on `platform`: "auto" is splash on TPU, cudnn on an NVIDIA GPU with
    bfloat16 compute (cuDNN's flash attention takes no float32), and xla elsewhere (the CPU, and f32 on
    GPU); a concrete name is returned as it is. Both kernels read the scores tile by tile, never as
    [rows, H, L, L] f32: the only way long completions (R1's 32k tokens) fit."""
    if name != "auto":
        return name
    if platform == "tpu":
        return "splash"
    if platform in ATTENTION_BACKENDS["cudnn"] and dtype == "bfloat16":
        return "cudnn"
    return "xla"


def shares_prefix(config) -> bool:
    """Can the training forward encode each prompt once per group (`grouped_hidden_states`)? Our XLA
    attention and splash take its mask (a group's prompt keys, then causal completion keys); cuDNN's
    padding masks cannot express it, so with cudnn every row is scored whole (train.shared_prefix is
    then a no-op). Protocol models are always scored whole (scoring.completion_scores)."""
    return not is_module_model(config) and config.attention != "cudnn"


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.x RoPE frequency scaling (Hugging Face rope_type "llama3"); see the module docstring.

    Frozen (hashable), like ModelConfig that holds it. Llama 3.1 / 3.3 use factor 8, Llama 3.2 1B / 3B
    factor 32; all low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self):
        if self.rope_type not in ROPE_SCALING_TYPES:
            raise ValueError(f"rope_scaling.rope_type={self.rope_type!r}: expected one of {ROPE_SCALING_TYPES}")
        if not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(f"rope_scaling: need high_freq_factor={self.high_freq_factor} > "
                             f"low_freq_factor={self.low_freq_factor} > 0")
        if not self.factor > 0 or not self.original_max_position_embeddings > 0:
            raise ValueError(f"rope_scaling: factor={self.factor} and original_max_position_embeddings="
                             f"{self.original_max_position_embeddings} must be positive")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters. Frozen (hashable): it is a static argument of jitted functions."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # None: plain RoPE; Llama 3.x: RopeScaling (a dict is converted)
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    max_position_embeddings: int = 2048
    dtype: str = "float32"  # compute (matmul, activation, KV cache) dtype: "float32" or "bfloat16"
    param_dtype: str = "float32"  # stored / optimised weight dtype: "float32" or "bfloat16"
    # LoRA: y = x W + (alpha / rank) (x A) B on the target projections (LORA_TARGETS keys). The
    # adapters (A [in, r], B [r, out]) are a separate tree (`init_lora`) added onto the params by
    # `merge_lora`; a params tree without them is the base model, adapters off.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple = ("q", "k", "v", "o", "gate", "up", "down")
    # How the training forward runs (no effect on the numbers, only on memory / compile time / speed):
    # scan_layers: the layers under one lax.scan over their stacked weights (compiled once, not L
    # times); remat: a REMAT_POLICIES key; attention: an ATTENTION_IMPLS name.
    scan_layers: bool = False
    remat: str = "none"
    attention: str = "xla"

    def __post_init__(self):
        if isinstance(self.lora_targets, (list, str)):  # keep it hashable
            targets = self.lora_targets.split(",") if isinstance(self.lora_targets, str) else self.lora_targets
            object.__setattr__(self, "lora_targets", tuple(t.strip() for t in targets if t.strip()))
        unknown = set(self.lora_targets) - set(LORA_TARGETS)
        if self.lora_rank < 0 or unknown:
            raise ValueError(f"lora_rank={self.lora_rank} must be >= 0 and lora_targets "
                             f"{self.lora_targets} a subset of {tuple(LORA_TARGETS)}")
        if isinstance(self.rope_scaling, dict):  # e.g. from JSON or dataclasses.asdict: keep it hashable
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"rope_scaling={self.rope_scaling!r}: expected None, a RopeScaling or a dict")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: expected one of {tuple(REMAT_POLICIES)}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention={self.attention!r}: expected one of {ATTENTION_IMPLS}")
        for field in ("dtype", "param_dtype"):
            value = getattr(self, field)
            if value not in DTYPES:
                raise ValueError(f"{field}={value!r}: expected one of {DTYPES}")


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Random params in the layout above, in config.param_dtype: normal(0.02) kernels/embeddings, zero
    biases, unit norm scales (q_norm / k_norm too, when qk_norm)."""
    dtype = jnp.dtype(config.param_dtype)
    d, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q_out, kv_out = config.num_heads * hd, config.num_kv_heads * hd

    def normal(k, shape):
        return (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype)

    def linear(k, fan_in, fan_out, bias=False):
        p = {"kernel": normal(k, (fan_in, fan_out))}
        if bias:
            p["bias"] = jnp.zeros((fan_out,), dtype)
        return p

    key_embed, key_head, *layer_keys = jax.random.split(key, config.num_layers + 2)
    layers = []
    for lk in layer_keys:
        kq, kk, kv, ko, kg, ku, kd = jax.random.split(lk, 7)
        bias = config.attention_bias
        self_attn = {
            "q_proj": linear(kq, d, q_out, bias),
            "k_proj": linear(kk, d, kv_out, bias),
            "v_proj": linear(kv, d, kv_out, bias),
            "o_proj": linear(ko, q_out, d),
        }
        if config.qk_norm:
            self_attn["q_norm"] = {"scale": jnp.ones((hd,), dtype)}
            self_attn["k_norm"] = {"scale": jnp.ones((hd,), dtype)}
        layers.append({
            "input_layernorm": {"scale": jnp.ones((d,), dtype)},
            "self_attn": self_attn,
            "post_attention_layernorm": {"scale": jnp.ones((d,), dtype)},
            "mlp": {
                "gate_proj": linear(kg, d, inter),
                "up_proj": linear(ku, d, inter),
                "down_proj": linear(kd, inter, d),
            },
        })
    params = {
        "embed_tokens": {"embedding": normal(key_embed, (config.vocab_size, d))},
        "layers": layers,
        "norm": {"scale": jnp.ones((d,), dtype)},
    }
    if not config.tie_embeddings:
        params["lm_head"] = linear(key_head, d, config.vocab_size)
    return params


def _cast(x: jax.Array, dtype) -> jax.Array:
    """x in dtype; x itself (no convert op in the program) when it already is."""
    return x if x.dtype == dtype else x.astype(dtype)


def init_lora(config: ModelConfig, key: jax.Array) -> dict:
    """Fresh adapters for every target projection of every layer, in config.param_dtype:
    {"layers": [{"self_attn": {"q_proj": {"lora_a": [in, r], "lora_b": [r, out]}, ...}, ...}, ...]}.
    A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default, Kaiming-uniform with a = sqrt 5), B = 0: the
    adapted model starts exactly equal to the base."""
    if config.lora_rank < 1:
        raise ValueError(f"init_lora needs lora_rank >= 1, got {config.lora_rank}")
    dtype, r = jnp.dtype(config.param_dtype), config.lora_rank
    d, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q_out, kv_out = config.num_heads * hd, config.num_kv_heads * hd
    shapes = {"q": (d, q_out), "k": (d, kv_out), "v": (d, kv_out), "o": (q_out, d), "gate": (d, inter),
              "up": (d, inter), "down": (inter, d)}
    layers = []
    for layer_key in jax.random.split(key, config.num_layers):
        layer = {}
        for name, k in zip(config.lora_targets, jax.random.split(layer_key, len(config.lora_targets))):
            fan_in, fan_out = shapes[name]
            bound = fan_in ** -0.5
            block, proj = LORA_TARGETS[name]
            layer.setdefault(block, {})[proj] = {
                "lora_a": jax.random.uniform(k, (fan_in, r), jnp.float32, -bound, bound).astype(dtype),
                "lora_b": jnp.zeros((r, fan_out), dtype)}
        layers.append(layer)
    return {"layers": layers}


def merge_lora(params: dict, adapters: dict) -> dict:
    """The params tree with the adapters added under their projections (new dicts, no array copied):
    the model with the adapters on. `params` without adapters is the base model."""
    layers = []
    for layer, extra in zip(params["layers"], adapters["layers"]):
        layer = dict(layer)
        for block, projections in extra.items():
            layer[block] = dict(layer[block])
            for proj, ab in projections.items():
                layer[block][proj] = {**layer[block][proj], **ab}
        layers.append(layer)
    return {**params, "layers": layers}


def fold_lora(config: ModelConfig, params: dict) -> dict:
    """Adapters folded into the weights: kernel + (alpha / r) A B, in float32, with no lora_* leaves
    left (a plain model: what `weights.save_hf` exports by default). f32 whatever the kernel's dtype:
    a LoRA update is small against its weight (std 1e-4 on weights of std 0.02 is typical), and added
    into a bf16 kernel it mostly rounds away (68 % of such entries kept; 22 % at 2e-5). The other
    leaves keep their dtype."""
    scale = config.lora_alpha / max(config.lora_rank, 1)

    def fold(tree):
        if not isinstance(tree, dict):
            return [fold(x) for x in tree] if isinstance(tree, list) else tree
        if "lora_a" in tree:
            delta = (tree["lora_a"].astype(jnp.float32) @ tree["lora_b"].astype(jnp.float32)) * scale
            out = {k: v for k, v in tree.items() if k not in ("lora_a", "lora_b")}
            out["kernel"] = tree["kernel"].astype(jnp.float32) + delta  # exact: no rounding back
            return out
        return {k: fold(v) for k, v in tree.items()}
    return fold(params)


def cast_params(params, dtype):
    """The params tree with every floating leaf cast to dtype ("float32", "bfloat16" or a jnp dtype);
    other leaves, and leaves already in dtype, are returned as they are."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda x: _cast(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float) -> jax.Array:
    """x * rsqrt(mean(x^2) + eps) * scale over the last axis; f32 inside (bf16 squares lose too much).

    The scale is first rounded to x's (the compute) dtype, like every other weight, so a forward
    over f32 params equals the forward over cast_params(params, dtype) exactly.
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * _cast(scale, x.dtype).astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(head_dim: int, *, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """RoPE inverse frequencies f32[head_dim / 2]: theta^(-2i / head_dim), then Llama 3.x scaling if given.

    The scaling follows transformers' `_compute_llama3_parameters` op for op, in f32 as there.
    """
    hd = head_dim
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))  # [hd/2]
    if scaling is None:
        return inv_freq
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    old_len = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (> old_len / low: never completed a turn in pretraining) are slowed by `factor`;
    # short ones (< old_len / high) kept; the band between is blended smoothly in 1 / wavelength.
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return jnp.where(medium, smoothed, scaled)


def rope(x: jax.Array, positions: jax.Array, *, theta: float, scaling: RopeScaling | None = None) -> jax.Array:
    """Rotary embedding, HF rotate_half convention: x [B, L, heads, hd], positions [B, L] -> same shape.

    `scaling` (config.rope_scaling): Llama 3.x frequency scaling, see `rope_inv_freq`.
    """
    hd = x.shape[-1]
    inv_freq = rope_inv_freq(hd, theta=theta, scaling=scaling)  # [hd/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, L, 1, hd]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)  # rotate_half: (x1, x2) -> (-x2, x1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def _linear(p: dict, x: jax.Array, dtype, lora_scale: float = 1.0) -> jax.Array:
    """x [..., in] @ kernel [in, out] (+ bias) (+ lora_scale * (x A) B when the projection carries
    LoRA adapters), with x, kernel, bias and adapters cast to the compute dtype."""
    x, kernel = _cast(x, dtype), _cast(p["kernel"], dtype)
    # A 2-D matmul on [B*L, in] rather than [B, L, in] @ [in, out]: with the 3-D form XLA:CPU
    # physically transposes the activations before every weight-gradient matmul in the backward
    # (101 transposes vs 16 in the forward). Measured 1.26x faster quick-start train step
    # (benchmarks/README.md, linear_layout).
    flat = x.reshape(-1, x.shape[-1])
    y = flat @ kernel
    if "lora_a" in p:  # low rank: two thin matmuls, never the [in, out] product A B
        y = y + ((flat @ _cast(p["lora_a"], dtype)) @ _cast(p["lora_b"], dtype)) * lora_scale
    y = y.reshape(*x.shape[:-1], kernel.shape[-1])
    return y + _cast(p["bias"], dtype) if "bias" in p else y


def _attention(config: ModelConfig, q, k, v, mask, *, keys_transposed: bool = False) -> jax.Array:
    """q [B, L, H, hd], k/v [B, KV, S, hd], mask bool [B, L, S] -> [B, L, H*hd]; scores/softmax in f32.

    keys_transposed: k is [B, KV, hd, S] (the decode cache's layout, see the module docstring); the
    no-cache (training) path passes [B, KV, S, hd] keys and differentiates through `_softmax_attention`.

    Layout chosen for XLA:CPU: batch dims (B, KV) leading and ONE row dim (G*L) per matmul make both
    einsums plain batched matmuls; [B, S, KV, hd] keys or separate G and L dims cost a transpose of
    the whole cache or a slow dot per step (measured 2.5 ms vs 0.7 ms per layer, batch-64 decode).
    """
    b, l, h, hd = q.shape
    kv = config.num_kv_heads
    g = h // kv  # query heads per KV head (HF repeat_kv: consecutive query heads share a KV head)
    q = q.reshape(b, l, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * l, hd)  # [B, KV, G*L, hd]
    row_mask = jnp.broadcast_to(mask[:, None, None], (b, 1, g, l, mask.shape[-1])).reshape(b, 1, g * l, -1)
    if keys_transposed:
        out = _softmax_attention_fwd(q, k, v, row_mask, "bkrd,bkds->bkrs")[0]
    else:
        out = _softmax_attention(q, k, v, row_mask)  # [B, KV, G*L, hd]
    return out.reshape(b, kv, g, l, hd).transpose(0, 3, 1, 2, 4).reshape(b, l, h * hd)  # -> [B, L, H*hd]


@jax.custom_vjp
def _softmax_attention(q, k, v, row_mask):
    """softmax(mask(q k^T / sqrt(hd))) v on q [B, KV, R, hd], k/v [B, KV, S, hd], row_mask bool [B, 1, R, S].

    A hand-written VJP (below) only to give XLA:CPU a cheaper softmax backward; the maths is autodiff's.
    """
    return _softmax_attention_fwd(q, k, v, row_mask)[0]


def _softmax_attention_fwd(q, k, v, row_mask, score_spec="bkrd,bksd->bkrs"):
    scores = jnp.einsum(score_spec, q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    # finfo.min rather than -inf: a fully masked (pad) query row then softmaxes to uniform, not NaN.
    scores = jnp.where(row_mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkrs,bksd->bkrd", probs, v)  # [B, KV, R, hd]
    return out, (q, k, v, row_mask, probs, out)


def _softmax_attention_bwd(residuals, d_out):
    q, k, v, row_mask, probs, out = residuals
    d_v = jnp.einsum("bkrs,bkrd->bksd", probs, d_out)
    d_probs = jnp.einsum("bkrd,bksd->bkrs", d_out, v, preferred_element_type=jnp.float32)
    # Softmax backward needs sum_s dP * P per row; it equals sum_d dO * O (O = P V), an hd-wide
    # reduction instead of an S-wide one over the [R, S] scores (FlashAttention's identity).
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = jnp.where(row_mask, probs.astype(jnp.float32) * (d_probs - delta), 0.0)  # masked: no gradient
    d_scores = (d_scores * (q.shape[-1] ** -0.5)).astype(q.dtype)
    d_q = jnp.einsum("bkrs,bksd->bkrd", d_scores, k)
    d_k = jnp.einsum("bkrs,bkrd->bksd", d_scores, q)
    return d_q, d_k, d_v, None


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def _qkv(config: ModelConfig, p: dict, x, positions):
    """A layer's attention inputs: x [B, L, D] -> q [B, L, H, hd], k / v [B, L, KV, hd] (input norm,
    projections, Qwen3's q/k norms, RoPE at `positions` [B, L])."""
    b, l, _ = x.shape
    hd = config.head_dim
    dtype = jnp.dtype(config.dtype)
    ls = config.lora_alpha / max(config.lora_rank, 1)  # LoRA scale (used only where adapters are merged in)
    attn = p["self_attn"]
    n = rms_norm(x, p["input_layernorm"]["scale"], eps=config.rms_norm_eps)
    q = _linear(attn["q_proj"], n, dtype, ls).reshape(b, l, config.num_heads, hd)  # [B, L, H*hd] -> [B, L, H, hd]
    k = _linear(attn["k_proj"], n, dtype, ls).reshape(b, l, config.num_kv_heads, hd)
    v = _linear(attn["v_proj"], n, dtype, ls).reshape(b, l, config.num_kv_heads, hd)
    if config.qk_norm:  # Qwen3: each head's q / k RMS-normalised over hd, before RoPE (as HF does)
        q = rms_norm(q, attn["q_norm"]["scale"], eps=config.rms_norm_eps)
        k = rms_norm(k, attn["k_norm"]["scale"], eps=config.rms_norm_eps)
    q = rope(q, positions, theta=config.rope_theta, scaling=config.rope_scaling)
    k = rope(k, positions, theta=config.rope_theta, scaling=config.rope_scaling)
    return q, k, v


def _block(config: ModelConfig, p: dict, x, positions, mask, layer_cache, cache_index, attention_mask=None):
    """One decoder layer. Without a cache, keys are this call's tokens; with one, the cache's S slots.
    attention_mask [B, L] (no cache): for the config.attention kernels other than "xla"."""
    dtype = jnp.dtype(config.dtype)
    ls = config.lora_alpha / max(config.lora_rank, 1)  # LoRA scale (used only where adapters are merged in)
    attn = p["self_attn"]
    q, k, v = _qkv(config, p, x, positions)
    if layer_cache is None and config.attention != "xla":  # an accelerator kernel (grpo_jax.attention)
        from grpo_jax import attention as attention_lib  # Pallas imports only when asked for
        interpret = config.attention == "splash_interpret"  # the Pallas interpreter: CPU tests
        attn_out = attention_lib.attend("splash" if interpret else config.attention, q, k, v, attention_mask,
                                        interpret=interpret)
        return _mlp_residual(config, p, x + _linear(attn["o_proj"], attn_out, dtype, ls), dtype, ls), None
    v = v.transpose(0, 2, 1, 3)  # [B, L, KV, hd] -> [B, KV, L, hd]
    if layer_cache is None:
        k = k.transpose(0, 2, 1, 3)  # [B, KV, L, hd]
    else:
        k = k.transpose(0, 2, 3, 1)  # [B, KV, hd, L]: the cache's transposed key layout
        layer_cache = {
            "k": jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype),
                                              (0, 0, 0, cache_index)),
            "v": jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype),
                                              (0, 0, cache_index, 0)),
        }
        k, v = layer_cache["k"], layer_cache["v"]
    attn_out = _attention(config, q, k, v, mask, keys_transposed=layer_cache is not None)  # [B, L, H*hd]
    x = x + _linear(attn["o_proj"], attn_out, dtype, ls)
    return _mlp_residual(config, p, x, dtype, ls), layer_cache


def _mlp_residual(config: ModelConfig, p: dict, x, dtype, ls):
    """x + down_proj(silu(gate_proj(m)) * up_proj(m)), m = RMSNorm(x): the layer's second half."""
    m = rms_norm(x, p["post_attention_layernorm"]["scale"], eps=config.rms_norm_eps)
    mlp = p["mlp"]
    h = jax.nn.silu(_linear(mlp["gate_proj"], m, dtype, ls)) * _linear(mlp["up_proj"], m, dtype, ls)  # [B, L, I]
    return x + _linear(mlp["down_proj"], h, dtype, ls)


def lm_head(config: ModelConfig, params: dict, x: jax.Array) -> jax.Array:
    """Final norm + LM head: hidden [B, L, D] -> logits f32[B, L, V] (head weight cast to the compute
    dtype, f32 accumulation).

    Split from the body so callers that need logits at only some positions (grpo_jax.sampling's
    completion_logps) can slice the hidden states first and skip the V-wide matmul elsewhere.
    """
    dtype = jnp.dtype(config.dtype)
    x = rms_norm(x, params["norm"]["scale"], eps=config.rms_norm_eps)
    flat = _cast(x.reshape(-1, x.shape[-1]), dtype)  # 2-D [B*L, D] for the same reason as `_linear`
    if config.tie_embeddings:
        logits = jnp.einsum("nd,vd->nv", flat, _cast(params["embed_tokens"]["embedding"], dtype),
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("nd,dv->nv", flat, _cast(params["lm_head"]["kernel"], dtype),
                            preferred_element_type=jnp.float32)
    return logits.reshape(*x.shape[:-1], logits.shape[-1])


def batch_sharded(x: jax.Array) -> jax.Array:
    """Activations stay sharded over the batch, as the MaxText models constrain them.

    Under a mesh context with the trainer's ("data", "fsdp") axes (`train_step.jit_train_step` traces
    the step inside one), x [B, ...] is constrained to the batch sharding; elsewhere (one device, the
    sampler, eval) it is returned as is. Why: the embedding table is FSDP-sharded along D (logical axis
    "embed"), so without this the gathered activations inherit a D sharding and XLA reshards them
    with whole-batch copies (+5 GiB per chip for the Qwen2.5-1.5B step on v5e-8, measured with
    grpo_jax.plan: 21.7 GiB, out of HBM, vs 16.6 with the embedding sharded along the vocabulary).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not {"data", "fsdp"} <= set(mesh.axis_names) or x.shape[0] % (
            mesh.shape["data"] * mesh.shape["fsdp"]):
        return x
    spec = jax.sharding.PartitionSpec(("data", "fsdp"), *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """[B, L] 1 = real token -> i32[B, L] positions cumsum(mask) - 1, clipped at 0 (left pads get 0)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def apply(config: ModelConfig, params: dict, tokens: jax.Array, *, attention_mask=None) -> jax.Array:
    """Full (no-cache) forward: tokens i32[B, L], attention_mask [B, L] (1 = real) -> logits f32[B, L, V]."""
    return lm_head(config, params, hidden_states(config, params, tokens, attention_mask=attention_mask))


def hidden_states(config: ModelConfig, params: dict, tokens: jax.Array, *, attention_mask=None) -> jax.Array:
    """The decoder body of `apply` (before the final norm): tokens i32[B, L] -> hidden [B, L, D]."""
    b, l = tokens.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, l), jnp.int32)
    real = attention_mask.astype(bool)
    positions = positions_from_mask(attention_mask)
    causal = jnp.tril(jnp.ones((l, l), bool))
    mask = causal[None] & real[:, None, :]  # [B, L(query), L(key)]
    x = batch_sharded(_cast(params["embed_tokens"]["embedding"][tokens], jnp.dtype(config.dtype)))  # [B, L, D]

    def layer(x, p):
        return _block(config, p, x, positions, mask, None, None, attention_mask)[0]
    return _over_layers(config, layer, x, params["layers"])


def _over_layers(config: ModelConfig, layer, carry, layers):
    """carry through `layer(carry, layer_params)` for every layer, as config says: rematerialised
    (config.remat: the backward recomputes what the policy does not keep), and unrolled (the CPU
    default, see the module docstring) or under one lax.scan over `stack_layers` (config.scan_layers)."""
    if config.remat != "none":
        layer = jax.checkpoint(layer, policy=REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers)
    if not config.scan_layers:
        for p in layers:
            carry = layer(carry, p)
        return carry
    carry, _ = jax.lax.scan(lambda c, p: (layer(c, p), None), carry, stack_layers(config, layers))
    return carry


def grouped_hidden_states(config: ModelConfig, params: dict, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                          completion_tokens: jax.Array, group_size: int):
    """`hidden_states` of G completions per prompt with each prompt encoded ONCE (shared-prefix forward,
    "Prefix Grouper", Liu et al. 2025, arXiv 2506.05433).

    prompt_tokens / prompt_mask [B, P] (left-padded, one row per group), completion_tokens i32[N, T]
    with N = B * G, group-major (row n continues prompt n // G) -> (prompt_hidden [B, P, D],
    completion_hidden [N, T, D]): the same numbers, to round-off, as `hidden_states` over the N rows
    concat(prompt_tokens repeated G times, completion_tokens) with mask concat(prompt_mask, ones)
    (the prompt half of every row of a group is prompt_hidden of that group).

    Per layer the two streams share the weights:
      prompts [B, P]: the usual causal + left-padding self-attention (positions cumsum(mask) - 1);
      completions [N, T]: positions len(prompt) + t; keys = [their group's prompt keys (P slots,
          masked by prompt_mask), their own completion keys (causal)], the prompt K/V repeated over G.
    So the prompt's projections, MLP and self-attention run on B rows instead of N, and the backward
    sums the G completions' gradients into the one prompt stream (the gradient of the repeat).
    Honours config.scan_layers / config.remat like `hidden_states` (the layer carries both streams).
    Attention: ours ("xla", over explicit [B, P, P] / [N, T, P + T] masks) or the splash kernel
    (`attention.attend` for the prompts, `attention.attend_after_prefix` for the completions, from the
    [B, P] / [N, P + T] padding masks: no mask or score of size T x (P + T) is built); cuDNN's padding
    masks cannot express the completions' keys (`shares_prefix`), so "cudnn" raises.
    """
    if not shares_prefix(config):
        raise ValueError(f"grouped_hidden_states (shared-prefix scoring, train.shared_prefix) needs "
                         f"model.attention xla or splash, got {config.attention!r}")
    b, p = prompt_tokens.shape
    n, t = completion_tokens.shape
    g = int(group_size)
    if g < 1 or n != b * g:
        raise ValueError(f"grouped_hidden_states: {n} completion rows are not {b} prompts x group_size={g}")
    dtype = jnp.dtype(config.dtype)
    prompt_mask = prompt_mask.astype(jnp.int32)
    real = prompt_mask.astype(bool)
    prompt_positions = positions_from_mask(prompt_mask)  # [B, P]
    # Completion token t sits at position len(prompt) + t (cumsum of concat(prompt_mask, ones) - 1).
    lengths = jnp.repeat(prompt_mask.sum(-1), g)  # [N]
    completion_positions = lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # [N, T]
    if config.attention == "xla":
        prompt_attn = jnp.tril(jnp.ones((p, p), bool))[None] & real[:, None, :]  # [B, P, P]
        completion_attn = jnp.concatenate(  # [N, T, P + T]: the group's real prompt keys, then causal
            [jnp.broadcast_to(jnp.repeat(real, g, axis=0)[:, None, :], (n, t, p)),
             jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool))[None], (n, t, t))], axis=-1)
    else:  # the kernel's padding masks: [B, P] and [N, P + T] (the group's prompt, then the completion)
        prompt_attn = prompt_mask
        completion_attn = jnp.concatenate([jnp.repeat(prompt_mask, g, axis=0), jnp.ones((n, t), jnp.int32)], 1)
    embedding = params["embed_tokens"]["embedding"]
    xs = (batch_sharded(_cast(embedding[prompt_tokens], dtype)),  # [B, P, D]
          batch_sharded(_cast(embedding[completion_tokens], dtype)))  # [N, T, D]

    def layer(xs, lp):
        return _grouped_block(config, lp, *xs, prompt_positions, completion_positions, prompt_attn,
                              completion_attn, g)
    return _over_layers(config, layer, xs, params["layers"])


def _grouped_block(config: ModelConfig, p: dict, xp, xc, prompt_positions, completion_positions, prompt_attn,
                   completion_attn, group_size: int):
    """One decoder layer of `grouped_hidden_states`: prompts xp [B, P, D], completions xc [N, T, D].
    prompt_attn / completion_attn: bool [B, P, P] / [N, T, P + T] for "xla"; for the splash kernel
    the padding masks [B, P] / [N, P + T]."""
    dtype = jnp.dtype(config.dtype)
    ls = config.lora_alpha / max(config.lora_rank, 1)
    o_proj = p["self_attn"]["o_proj"]
    qp, kp, vp = _qkv(config, p, xp, prompt_positions)  # [B, P, ...]
    qc, kc, vc = _qkv(config, p, xc, completion_positions)  # [N, T, ...]
    if config.attention != "xla":  # splash (shares_prefix): the kernel's [., L, heads, hd] layout
        from grpo_jax import attention as attention_lib  # Pallas imports only when asked for
        interpret = config.attention == "splash_interpret"
        out_p = attention_lib.attend("splash", qp, kp, vp, prompt_attn, interpret=interpret)  # [B, P, H*hd]
        k = jnp.concatenate([jnp.repeat(kp, group_size, axis=0), kc], axis=1)  # [N, P + T, KV, hd]
        v = jnp.concatenate([jnp.repeat(vp, group_size, axis=0), vc], axis=1)
        out_c = attention_lib.attend_after_prefix("splash", qc, k, v, completion_attn, interpret=interpret)
    else:
        kp, vp, kc, vc = (x.transpose(0, 2, 1, 3) for x in (kp, vp, kc, vc))  # [., KV, L, hd]
        out_p = _attention(config, qp, kp, vp, prompt_attn)  # [B, P, H*hd]
        k = jnp.concatenate([jnp.repeat(kp, group_size, axis=0), kc], axis=2)  # [N, KV, P + T, hd]
        v = jnp.concatenate([jnp.repeat(vp, group_size, axis=0), vc], axis=2)
        out_c = _attention(config, qc, k, v, completion_attn)  # [N, T, H*hd]
    xp = _mlp_residual(config, p, xp + _linear(o_proj, out_p, dtype, ls), dtype, ls)
    xc = _mlp_residual(config, p, xc + _linear(o_proj, out_c, dtype, ls), dtype, ls)
    return xp, xc


def stack_layers(config: ModelConfig, layers) -> dict:
    """The per-layer param dicts as one dict of [num_layers, ...] arrays, each first cast to the compute
    dtype (so the stacked copy a scanned forward makes is in bf16 when computing in bf16; the in-layer
    casts are then no-ops and every number is the same). Weights stay stored per layer: the sampler's
    unrolled decode reads each layer's weights in place, which a slice of a stacked array would copy
    (2.4x slower weight-bound decode on XLA:CPU, 8 layers of 1024^2)."""
    dtype = jnp.dtype(config.dtype)
    return jax.tree.map(lambda *xs: jnp.stack([_cast(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                                               else x for x in xs]), *layers)


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> list:
    """Zeroed per-layer KV cache in the compute dtype (config.dtype): a list of
    {"k": [B, KV, hd, max_len] (keys stored transposed), "v": [B, KV, max_len, hd]}."""
    b, kv, hd = batch_size, config.num_kv_heads, config.head_dim
    dtype = jnp.dtype(config.dtype)
    return [{"k": jnp.zeros((b, kv, hd, max_len), dtype), "v": jnp.zeros((b, kv, max_len, hd), dtype)}
            for _ in range(config.num_layers)]


def apply_with_cache(config: ModelConfig, params: dict, tokens: jax.Array, positions: jax.Array,
                     cache: list, cache_index, kv_mask: jax.Array, *, last_only: bool = False):
    """Cached forward (prefill with L = P, decode with L = 1); see the module docstring.

    tokens/positions i32[B, L]; cache from init_cache (S slots); cache_index scalar int: first slot
    written; kv_mask [B, S], 1 = slot holds a real token. Returns (logits f32[B, L, V], new cache),
    or logits f32[B, 1, V] of the last position only when last_only (a sampler's prefill: with a
    150k vocabulary the full [B, P, V] logits would be gigabytes).
    """
    l = tokens.shape[1]
    s = kv_mask.shape[1]
    slot = jnp.arange(s)[None, :]  # [1, S]
    query_slot = cache_index + jnp.arange(l)[:, None]  # [L, 1]
    mask = (slot <= query_slot)[None] & kv_mask.astype(bool)[:, None, :]  # [B, L, S]
    x = _cast(params["embed_tokens"]["embedding"][tokens], jnp.dtype(config.dtype))  # [B, L, D]
    new_cache = []
    for p, layer_cache in zip(params["layers"], cache):  # unrolled: per-layer in-place cache updates
        x, layer_cache = _block(config, p, x, positions, mask, layer_cache, cache_index)
        new_cache.append(layer_cache)
    if last_only:
        x = x[:, -1:]
    return lm_head(config, params, x), new_cache


# ------------------------------------------------------------------------------------------------
# Flax NNX: the same model as modules, and the protocol any causal LM module meets to be trained
# and sampled here.
#
# The modules hold the parameters (nnx.Param; LoRA adapters as nnx.LoRAParam, so
# `nnx.split(model, nnx.LoRAParam, ...)` separates what a LoRA run trains) in the layout above, and
# their computation is the functional core above, called on their own state: one implementation,
# two front ends. `nnx.split(CausalLM(config, rngs=...))` gives (graphdef, state) whose pure dict is
# `init_params`' layout (layers keyed 0..L-1); the jitted train step and sampler are pure
# functions of either form.
#
# PROTOCOL (bring your own NNX model). A module `m` can be trained by grpo_jax.train_step and
# sampled by grpo_jax.sampling when it has
#     m(tokens i32[B, L], *, attention_mask [B, L]) -> logits f32[B, L, V]
#         a full causal forward; attention_mask 1 = real token, 0 = left padding (position of a
#         token = number of real tokens before it); logits at i predict token i + 1
#     m.init_cache(batch_size: int, max_len: int) -> cache (any pytree of arrays)
#     m.decode(tokens i32[B, L], positions i32[B, L], cache, cache_index, kv_mask [B, S])
#         -> (logits f32[B, L, V], cache)
#         writes the L tokens at slots cache_index .. cache_index + L - 1 (the same for every row);
#         query l sees slot s iff s <= cache_index + l and kv_mask[b, s] == 1
# Pass `graphdef` (from `nnx.split(m)`) where a ModelConfig goes, and its state (an nnx.State or its
# pure dict) as the params: `train_step.build_train_step(graphdef, ...)`,
# `sampling.sample(graphdef, state, ...)`, `scoring.completion_logps(graphdef, state, ...)`.
# Inside the jitted functions the module is rebuilt with `nnx.merge` (free at run time).
# Our own CausalLM goes through the faster ModelConfig path (hidden states sliced before the LM
# head; a decode cache that grows in segments), and gives the same numbers either way (tested).
# ------------------------------------------------------------------------------------------------
from flax import nnx  # noqa: E402  (kept with the NNX half of the module)


def _variable(path: tuple, value):
    return (nnx.LoRAParam if path and path[-1] in ("lora_a", "lora_b") else nnx.Param)(value)


class _Params(nnx.Module):
    """A node of the parameter tree: each dict key becomes an attribute (a sub-node or a variable)."""

    def __init__(self, tree: dict, path: tuple = ()):
        for name, value in tree.items():
            setattr(self, name, _Params(value, path + (name,)) if isinstance(value, dict)
                    else _variable(path + (name,), value))


class CausalLM(nnx.Module):
    """The decoder as a Flax NNX module: `CausalLM(config, rngs=nnx.Rngs(0))` (random init, the same
    values as `init_params(config, key)`), or `CausalLM.from_params(config, params)` (e.g. what
    `weights.load_hf` returns, adapters merged in or not). Meets the protocol above."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs | None = None, params: dict | None = None):
        if params is None:
            params = init_params(config, (rngs or nnx.Rngs(0)).params())
        self.config = config
        for name, value in params.items():
            if name == "layers":
                self.layers = nnx.List([_Params(layer, ("layers",)) for layer in value])
            else:
                setattr(self, name, _Params(value, (name,)))

    @classmethod
    def from_params(cls, config: ModelConfig, params: dict) -> "CausalLM":
        return cls(config, params=params)

    def params(self) -> dict:
        """The functional layout (`init_params`' dict, layers as a list) of this module's state."""
        tree = nnx.state(self, nnx.Param).to_pure_dict()
        if "layers" in tree:
            tree["layers"] = [tree["layers"][i] for i in sorted(tree["layers"])]
        return tree

    def __call__(self, tokens: jax.Array, *, attention_mask=None) -> jax.Array:
        return apply(self.config, self.params(), tokens, attention_mask=attention_mask)

    def init_cache(self, batch_size: int, max_len: int):
        return init_cache(self.config, batch_size, max_len)

    def decode(self, tokens, positions, cache, cache_index, kv_mask):
        return apply_with_cache(self.config, self.params(), tokens, positions, cache, cache_index, kv_mask)


def is_module_model(config) -> bool:
    """True when `config` is an NNX graphdef (a protocol model), not our ModelConfig."""
    return not isinstance(config, ModelConfig)


def module_logits(graphdef, params, tokens: jax.Array, *, attention_mask=None) -> jax.Array:
    """A protocol model's full forward, from its graphdef and state (pure dict or nnx.State)."""
    return nnx.merge(graphdef, params)(tokens, attention_mask=attention_mask).astype(jnp.float32)


def cache_init(config, params, batch_size: int, max_len: int):
    """`init_cache` for our model or a protocol model's own `init_cache`."""
    if is_module_model(config):
        return nnx.merge(config, params).init_cache(batch_size, max_len)
    return init_cache(config, batch_size, max_len)


def forward_with_cache(config, params, tokens, positions, cache, cache_index, kv_mask, *, last_only=False):
    """`apply_with_cache` for our model or a protocol model's `decode`."""
    if is_module_model(config):
        logits, cache = nnx.merge(config, params).decode(tokens, positions, cache, cache_index, kv_mask)
        return (logits[:, -1:] if last_only else logits).astype(jnp.float32), cache
    return apply_with_cache(config, params, tokens, positions, cache, cache_index, kv_mask, last_only=last_only)
