"""Device mesh, parameter shardings by logical axis name (FSDP), and batch shardings.

Mesh: two axes ("data", "fsdp"). FSDP is data parallel too, so the batch's leading dimension is
sharded over both axes; parameters are sharded over "fsdp" (by default) and gathered where used.

Parameters are sharded BY NAME, as in MaxText and Flax's logical partitioning (`nn.logical_to_mesh_axes`):
1. LOGICAL_AXES names each dimension of each parameter of the model's PARAM LAYOUT (model.py) with a
   logical axis: the embedding is ("vocab", "embed"), q_proj's kernel ("embed", "heads"), ...
   `logical_axes(path, ndim)` looks a parameter up by its path in the param tree.
2. RULES maps each logical name to a mesh axis (a name, a tuple of names sharded together, or None).
   The default is MaxText's FSDP: only "embed" (the model width D, present in every big matrix) is
   sharded, over "fsdp"; everything else is replicated. So the embedding [V, D] is sharded along D,
   not along the vocabulary, and every layer's kernels are split the same way.
Resolution of one parameter (`logical_to_spec`), with shape-aware fallbacks:
- Precedence: dims are considered in the order their names appear in `rules` (as in Flax, where the
  rules list is in precedence order); each mesh axis shards at most one dim of a parameter. RULES
  lists "embed" after the other names, so an override such as {**RULES, "vocab": "fsdp"} takes "fsdp"
  for the vocabulary dim of the embedding and LM head while "embed" still shards the other kernels.
- Divisibility: a dim whose size is not divisible by the size of its mesh axis (product, for a tuple)
  stays replicated, and that mesh axis stays free for a later dim in precedence order. A parameter
  with no shardable dim is replicated (so all 1-D norms / biases are, under the default RULES).
- Names missing from `rules` are replicated (Flax's "axis is unsharded" fallback).
- Stacked layers: an array with one more dim than its names (e.g. layers stacked for lax.scan) gets a
  leading "layers" axis (replicated by default), when its path goes through "layers".
- Unknown paths (a model of your own, with its own parameter names), and known names whose array has
  a rank the table does not describe, fall back to the pre-table rule: a >= 2-D array is sharded over
  "fsdp" along its largest dim divisible by the fsdp size (the first on ties); 1-D arrays and arrays
  with no divisible dim are replicated. So bring-your-own models still shard.
Paths are read from the pytree keys: dict keys and attribute names; integer indices (the layer list)
and a trailing `.value` (Flax NNX Variables) are skipped, so an `nnx.split` state with the same
attribute names resolves like the plain dict.

Mesh mode: Auto axes (classic GSPMD), decided here once. jax.make_mesh now defaults to Explicit axes,
under which every mixed-sharding matmul needs an explicit reshard and jit(init) needs jax.set_mesh.
With Auto axes the code stays sharding-agnostic: we annotate inputs/outputs (params created with
out_shardings, batches device_put with batch_sharding) and XLA's propagation inserts the
all-gathers/reduce-scatters, so the same model code runs on one device or a mesh.
"""
import math
from collections.abc import Mapping
from types import MappingProxyType

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from grpo_jax import model as model_lib

BATCH_AXES = ("data", "fsdp")

# (module name, parameter name) -> one logical axis name per dim, for model.py's PARAM LAYOUT
# (kernels are [in, out]). H*hd and KV*hd are "heads" / "kv_heads"; I is "mlp"; D is "embed".
_PROJ = {"q_proj": ("embed", "heads"), "k_proj": ("embed", "kv_heads"), "v_proj": ("embed", "kv_heads"),
         "o_proj": ("heads", "embed"), "gate_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"),
         "down_proj": ("mlp", "embed"), "lm_head": ("embed", "vocab")}
LOGICAL_AXES = MappingProxyType({  # read-only: no module-level mutable state
    ("embed_tokens", "embedding"): ("vocab", "embed"),                            # [V, D]
    **{(m, "kernel"): axes for m, axes in _PROJ.items()},                        # [in, out]
    **{(m, "bias"): (axes[1],) for m, axes in _PROJ.items() if m != "o_proj"},    # [out]
    **{(m, "scale"): ("norm",) for m in ("input_layernorm", "post_attention_layernorm", "norm")},  # [D]
    ("q_norm", "scale"): ("head_dim",), ("k_norm", "scale"): ("head_dim",),       # [hd] (Qwen3)
})
# LoRA adapters under a linear (`<linear>/lora_a` [in, r], `<linear>/lora_b` [r, out], or the same with
# a trailing `/kernel`) take their axes from that linear's kernel: (in, "lora") and ("lora", out).
LORA_PARAMS = ("lora_a", "lora_b")

# Logical name -> mesh axis (str), mesh axes sharded together (tuple of str), or None (replicated).
# Order is precedence (see the module docstring): "embed" comes after the names one may want to shard
# instead, and "layers" (the leading dim of stacked layers) last. Read-only: override with
# `param_shardings(mesh, params, rules={**RULES, "vocab": "fsdp"})`.
RULES = MappingProxyType({"vocab": None, "mlp": None, "heads": None, "kv_heads": None, "lora": None,
                          "norm": None, "head_dim": None, "embed": "fsdp", "layers": None})
# The sampler's tensor-parallel layout (`sampling.sample(..., weight_layout="tensor")`): the MLP
# intermediate dim, the attention heads (q/k/v outputs, o_proj's input) and the vocabulary (embedding,
# LM head) over "fsdp", the model width D replicated, so a decode step multiplies each chip's slice
# of every weight (Megatron: column-parallel q/k/v/gate/up/LM head, row-parallel o/down, whose partial
# sums are all-reduced) and never gathers a weight. Dims that do not divide the axis stay replicated
# (e.g. 2 KV heads * head_dim on an axis they do not divide), as everywhere here.
SAMPLE_RULES = MappingProxyType({"vocab": "fsdp", "mlp": "fsdp", "heads": "fsdp", "kv_heads": "fsdp",
                                 "lora": None, "norm": None, "head_dim": None, "embed": None,
                                 "layers": None})
FALLBACK_AXIS = "fsdp"  # the mesh axis of the largest-divisible-dim rule for paths the table lacks


def make_mesh(*, data: int, fsdp: int, devices=None) -> Mesh:
    """A (data, fsdp) mesh with Auto axes over `devices` (default: all of jax.devices())."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or fsdp < 1 or data * fsdp != len(devices):
        raise ValueError(
            f"mesh.data={data} x mesh.fsdp={fsdp} = {data * fsdp} must equal the device count "
            f"{len(devices)}"
        )
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def _path_keys(path) -> tuple:
    """Key path -> its keys (str names, int indices), NNX's trailing `.value` dropped."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    if keys and keys[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        keys.pop()
    return tuple(k for k in keys if isinstance(k, (str, int)))


def logical_axes(path, ndim: int) -> tuple[str, ...] | None:
    """The logical axis names of the parameter at `path` (a jax key path, or a tuple of names and
    indices) with `ndim` dims, or None when the table does not describe it (the caller falls back)."""
    keys = path if all(isinstance(k, (str, int)) for k in path) else _path_keys(path)
    names = tuple(k for k in keys if isinstance(k, str))
    if len(names) >= 3 and names[-1] == "kernel" and names[-2] in LORA_PARAMS:
        names = names[:-1]  # <linear>/lora_a/kernel -> <linear>/lora_a
    axes = None
    if len(names) >= 2 and names[-1] in LORA_PARAMS:
        kernel = LOGICAL_AXES.get((names[-2], "kernel"))
        if kernel is not None:
            axes = (kernel[0], "lora") if names[-1] == "lora_a" else ("lora", kernel[1])
    elif len(names) >= 2:
        axes = LOGICAL_AXES.get(names[-2:])
    if axes is None:
        return None
    # Layers stacked along a leading dim: the path goes through "layers" with no layer index after it.
    if ndim == len(axes) + 1 and "layers" in keys[:-2]:
        after = keys[keys.index("layers") + 1]
        if isinstance(after, str):
            axes = ("layers", *axes)
    return axes if ndim == len(axes) else None


def _mesh_axes(value, mesh_shape, name) -> tuple[str, ...]:
    axes = () if value is None else (value,) if isinstance(value, str) else tuple(value)
    for a in axes:
        if a not in mesh_shape:
            raise ValueError(f"sharding rule {name!r} -> {value!r}: mesh axis {a!r} is not one of the "
                             f"mesh's axes {tuple(mesh_shape)}")
    return axes


def logical_to_spec(names, shape, mesh_shape: Mapping[str, int], rules: Mapping = RULES) -> PartitionSpec:
    """Logical names of each dim + the array's shape -> PartitionSpec (precedence and divisibility
    fallback as in the module docstring). `mesh_shape`: mesh axis name -> size (e.g. `mesh.shape`)."""
    if len(names) != len(shape):
        raise ValueError(f"logical axes {names} do not match the shape {tuple(shape)}")
    order = {name: i for i, name in enumerate(rules)}
    dims = sorted((d for d in range(len(names)) if names[d] in order), key=lambda d: order[names[d]])
    spec, used = [None] * len(shape), set()
    for d in dims:
        axes = _mesh_axes(rules[names[d]], mesh_shape, names[d])
        if not axes or used.intersection(axes) or shape[d] % math.prod(mesh_shape[a] for a in axes):
            continue  # replicated, mesh axis taken by a dim of higher precedence, or not divisible
        spec[d] = axes[0] if len(axes) == 1 else axes
        used.update(axes)
    return PartitionSpec(*spec) if any(s is not None for s in spec) else PartitionSpec()


def _largest_divisible_spec(shape, fsdp_size: int) -> PartitionSpec:
    """The fallback for parameters the table does not know (see the module docstring)."""
    if len(shape) < 2:
        return PartitionSpec()
    divisible = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
    if not divisible:
        return PartitionSpec()
    dim = max(divisible, key=lambda d: shape[d])  # largest divisible dim (first one on ties)
    return PartitionSpec(*[(FALLBACK_AXIS if d == dim else None) for d in range(len(shape))])


def param_specs(mesh: Mesh, params, *, rules: Mapping | None = None):
    """Pytree of PartitionSpec matching `params` (arrays or jax.ShapeDtypeStruct leaves).

    `rules` replaces RULES (names missing from it are replicated): start from {**RULES, ...}.
    """
    rules = RULES if rules is None else rules
    mesh_shape = dict(mesh.shape)
    for name, value in rules.items():
        _mesh_axes(value, mesh_shape, name)  # a typo in an axis name fails even if no param uses it

    def spec(path, x):
        names = logical_axes(path, len(x.shape))
        if names is None:
            if FALLBACK_AXIS not in mesh_shape:
                return PartitionSpec()
            return _largest_divisible_spec(x.shape, mesh_shape[FALLBACK_AXIS])
        return logical_to_spec(names, x.shape, mesh_shape, rules)

    return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(mesh: Mesh, params, *, rules: Mapping | None = None):
    """Pytree of NamedSharding matching `params` (arrays or jax.ShapeDtypeStruct leaves): by logical
    axis name through `rules` (default RULES), unknown paths by the largest divisible dim."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(mesh, params, rules=rules),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_logical_axes(params):
    """Pytree of each parameter's logical axis names (None where the table does not describe it)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: logical_axes(p, len(x.shape)), params)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dim over ("data", "fsdp"), the other ndim - 1 dims replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def init_params_sharded(config: model_lib.ModelConfig, key: jax.Array, mesh: Mesh, *,
                        rules: Mapping | None = None):
    """model.init_params, created already sharded (abstract init -> shardings from the logical axis
    rules -> jit(init, out_shardings)): no full copy on one device; same values."""

    def init(k):
        return model_lib.init_params(config, k)

    abstract = jax.eval_shape(init, key)
    return jax.jit(init, out_shardings=param_shardings(mesh, abstract, rules=rules))(key)


def under_mesh(fn, mesh: Mesh):
    """fn traced under `mesh`'s abstract mesh, so that the model's activation constraints
    (`model.batch_sharded`) know the batch axes. The jitted step and SFT step use it."""
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)
    return traced
