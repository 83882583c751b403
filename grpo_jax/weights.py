"""Checkpoints <-> params: Hugging Face safetensors directories (load and save) and GGUF (load).

The param layout is the one `grpo_jax.model` documents. Names map one to one, by rule:
    params path ("layers", 3, "self_attn", "q_proj", "kernel")  <->  HF "model.layers.3.self_attn.q_proj.weight"
    ("lm_head", "kernel") <-> "lm_head.weight" (no "model." prefix); kernel / scale / embedding <-> weight.
    Qwen3's per-head norms: ("layers", 3, "self_attn", "q_norm", "scale")
    <-> "model.layers.3.self_attn.q_norm.weight".
Families (config.json model_type -> ModelConfig): "llama" (Llama 2/3.x, SmolLM2: no biases), "qwen2"
(Qwen2 / Qwen2.5: attention_bias), "qwen3" (qk_norm, explicit head_dim). RoPE: plain, or Llama 3.x's
"llama3" scaling (read from rope_parameters, or the legacy rope_scaling key) -> ModelConfig.rope_scaling.
Kernels are stored [in, out]: the transpose of torch's Linear.weight [out, in].

Loading walks the abstract param tree of `model.init_params` (the single source of truth for names,
shapes and the stored dtype, config.param_dtype), checks every checkpoint tensor's name and shape
before reading any data, then reads one tensor at a time into host memory, casts / transposes it
there and places it on its devices at once (`jax.device_put(arr, sharding)` with
`sharding.param_shardings` when a mesh is given): the whole model never exists twice in host memory.

Two dtypes (see grpo_jax.model): `param_dtype` is what the params are stored (and trained) in,
`dtype` the compute dtype written into the returned ModelConfig. Both default to f32; asking for
bf16 compute with `dtype=jnp.bfloat16` alone keeps f32 master weights. `save_hf` writes the params
as they are stored, with config.json's torch_dtype from config.param_dtype.

GGUF (llama.cpp): llama.cpp's converter permutes the rows of attn_q / attn_k within each head from
HF's rotate_half RoPE layout (first half of head_dim = real parts, second half = imaginary parts) to
its interleaved layout (re, im, re, im, ...); `_unpermute_rope_rows` undoes exactly that permutation.
Quantised tensors are dequantised to f32 with `gguf.quants.dequantize`, whose output is in HF's
[out, in] order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import ConfigError
from grpo_jax import hub
from grpo_jax import model as model_lib
from grpo_jax import sharding
from grpo_jax.model import ModelConfig, init_params

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
# transformers' Qwen3Config class default, used when a qwen3 config.json has no head_dim (Qwen3's head_dim
# is its own setting, not hidden_size / heads: Qwen3-0.6B has hidden 1024, 16 heads, head_dim 128).
_QWEN3_HEAD_DIM = 128
_SAFETENSORS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
# Buffers some older checkpoints carry; recomputed by the model, so skipped when present.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# --------------------------------------------------------------------------- names and layout


def _hf_name(keypath) -> tuple[str, bool]:
    """Param key path -> (HF tensor name, whether the array is transposed relative to HF)."""
    keys = [str(k.key) if hasattr(k, "key") else str(k.idx) for k in keypath]
    leaf = keys[-1]
    keys[-1] = "bias" if leaf == "bias" else "weight"  # kernel / scale / embedding are all "weight"
    name = ".".join(keys)
    return (name if keys[0] == "lm_head" else "model." + name), leaf == "kernel"


_GGUF_MODULES = {
    "embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}


def _gguf_name(keypath) -> str:
    """Param key path -> llama.cpp tensor name.

    e.g. ("layers", 0, "self_attn", "q_proj", "kernel") -> "blk.0.attn_q.weight".
    """
    keys = [k.key if hasattr(k, "key") else k.idx for k in keypath]
    suffix = "bias" if keys[-1] == "bias" else "weight"
    if keys[0] == "layers":
        return f"blk.{keys[1]}.{_GGUF_MODULES[keys[-2]]}.{suffix}"
    return f"{_GGUF_MODULES[keys[0]]}.{suffix}"


def _abstract_params(config: ModelConfig):
    """Shapes and dtypes of the param tree, without allocating it."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def _dtype_name(dtype) -> str:
    name = "float32" if dtype is None else jnp.dtype(dtype).name
    if name not in model_lib.DTYPES:
        raise ValueError(f"dtype {name!r} is not supported: use jnp.float32 or jnp.bfloat16")
    return name


def _build(config: ModelConfig, mesh, read):
    """The param tree, leaf by leaf: `read(keypath, abstract_leaf)` -> host array in the final layout.

    Each leaf is cast on the host and placed straight onto its target sharding (or the default
    device), so only one tensor at a time lives in host memory beyond the checkpoint file itself.
    """
    abstract = _abstract_params(config)
    if mesh is not None:
        from grpo_jax import sharding  # imported here: only mesh placement needs it

        shardings = sharding.param_shardings(mesh, abstract)
    else:
        shardings = jax.tree.map(lambda _: None, abstract)

    def place(keypath, leaf, target):
        arr = np.asarray(read(keypath, leaf), dtype=leaf.dtype)
        return jax.device_put(arr, target) if target is not None else jnp.asarray(arr)

    return jax.tree_util.tree_map_with_path(place, abstract, shardings)


# --------------------------------------------------------------------------- Hugging Face


def _config_from_hf(hf: dict, *, file: pathlib.Path, dtype: str, param_dtype: str = "float32") -> ModelConfig:
    """config.json dict -> ModelConfig; anything the model does not implement is an error."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{file}: unsupported model_type {model_type!r}; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")

    def unsupported(what):
        raise ValueError(f"{file}: {what} is not implemented by grpo_jax.model ({model_type})")

    # transformers 5 writes rope_parameters; older files rope_theta (+ rope_scaling). As transformers 5
    # reads them (convert_rope_params_to_dict), a non-empty legacy rope_scaling replaces rope_parameters.
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope = dict(hf.get(key) or {})
    rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default",) + model_lib.ROPE_SCALING_TYPES:
        raise ValueError(f"{file}: RoPE scaling {rope_type!r} ({key}.rope_type) is not implemented by "
                         f"grpo_jax.model; implemented: default, {', '.join(model_lib.ROPE_SCALING_TYPES)}")
    rope_scaling = None
    if rope_type == "llama3":
        # original_max_position_embeddings as transformers' standardize_rope_params: a top-level key
        # wins, then the one in the RoPE dict, then max_position_embeddings.
        if hf.get("original_max_position_embeddings") is not None:
            rope["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
        rope.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
        fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in fields if rope.get(k) is None]
        if missing:
            raise ValueError(f"{file}: {key} (rope_type 'llama3') lacks {', '.join(missing)}")
        try:
            rope_scaling = model_lib.RopeScaling(
                factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]))
        except ValueError as e:
            raise ValueError(f"{file}: {key}: {e}") from None
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        unsupported("partial_rotary_factor != 1")
    if hf.get("hidden_act", "silu") != "silu":
        unsupported(f"hidden_act {hf['hidden_act']!r}")
    if hf.get("mlp_bias"):
        unsupported("mlp_bias=true")
    if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        unsupported("use_sliding_window=true")
    if model_type == "qwen2":
        attention_bias = True  # Qwen2 always has q/k/v biases; its config has no switch
    else:
        attention_bias = bool(hf.get("attention_bias", False))
        if attention_bias:
            unsupported(f"attention_bias=true ({'Qwen3' if model_type == 'qwen3' else 'Llama'} puts a bias "
                        "on o_proj too)")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or (_QWEN3_HEAD_DIM if model_type == "qwen3" else hf["hidden_size"] // heads)
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=hf["intermediate_size"],
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        qk_norm=model_type == "qwen3",
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        dtype=dtype,
        param_dtype=param_dtype,
    )


def _tensor_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """HF tensor name -> the .safetensors file holding it (one file, or a sharded index)."""
    from safetensors import safe_open

    index = path / _INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: path / fname for name, fname in weight_map.items()}
        for name, file in files.items():
            if not file.is_file():
                raise ValueError(f"{file}: file missing (listed in {index} for tensor {name})")
        return files
    single = path / _SAFETENSORS
    if not single.is_file():
        raise ValueError(f"{single}: file missing (and no {_INDEX} in {path})")
    with safe_open(single, framework="np") as f:
        return {name: single for name in f.keys()}


def load_hf(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32,
            mesh=None) -> tuple[ModelConfig, dict]:
    """Load a Hugging Face Llama / Qwen2 / Qwen3 directory -> (ModelConfig, params): a local one, or a
    Hub name ("Qwen/Qwen2.5-0.5B-Instruct") resolved through huggingface_hub's cache (`grpo_jax.hub`).

    Params are cast to `param_dtype` (the stored / optimised dtype) and, when `mesh` is given, placed
    tensor by tensor with `sharding.param_shardings(mesh, ...)`; `dtype` is the compute dtype
    (config.dtype). A caller passing only `dtype=jnp.bfloat16` gets bf16 compute over f32 params: bf16
    storage must be asked for with `param_dtype=jnp.bfloat16` (fine for inference, lossy for
    training: small Adam updates round away). Any missing file, missing / unexpected tensor or shape
    mismatch raises ValueError naming the file and the tensor before any weight is read.
    """
    from safetensors import safe_open

    path = hub.resolve(path, key="load_hf(path)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{config_file}: file missing (not a Hugging Face model directory)")
    hf_config = json.loads(config_file.read_text())
    config = _config_from_hf(hf_config, file=config_file, dtype=_dtype_name(dtype),
                             param_dtype=_dtype_name(param_dtype))
    files = _tensor_files(path)

    # Expected tensors, from the abstract tree: name -> (HF shape, transposed?).
    expected = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(_abstract_params(config))[0]:
        name, transposed = _hf_name(keypath)
        expected[name] = (tuple(reversed(leaf.shape)) if transposed else tuple(leaf.shape), transposed)
    for name in expected:
        if name not in files:
            where = path / _INDEX if (path / _INDEX).is_file() else path / _SAFETENSORS
            raise ValueError(f"{where}: tensor {name} missing")
    for name, file in files.items():
        # A tied checkpoint may still store lm_head.weight (a copy of the embedding): ignore it.
        if name not in expected and not name.endswith(_IGNORED_SUFFIXES) and not (
                name == "lm_head.weight" and config.tie_embeddings):
            raise ValueError(f"{file}: unexpected tensor {name} (a {hf_config['model_type']} model "
                             f"with this config.json has no such parameter)")

    # Check every shape first (header reads only), so a bad file fails before any transfer.
    with contextlib.ExitStack() as stack:
        handles = {}
        for name, (shape, _) in expected.items():
            file = files[name]
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(file, framework="np"))
            found = tuple(handles[file].get_slice(name).get_shape())
            if found != shape:
                raise ValueError(f"{file}: tensor {name} has shape {list(found)}, expected {list(shape)}")

        def read(keypath, leaf):
            name, transposed = _hf_name(keypath)
            handle = handles[files[name]]
            if handle.get_slice(name).get_dtype() == "BF16":
                # numpy cannot decode bf16 (ENVIRONMENT.md): read through jax, kept on the host CPU.
                with safe_open(files[name], framework="flax", device="cpu") as f_flax:
                    with jax.default_device(jax.devices("cpu")[0]):
                        arr = np.asarray(f_flax.get_tensor(name))
            else:
                arr = handle.get_tensor(name)
            return arr.T if transposed else arr

        params = _build(config, mesh, read)
    return config, params


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _config_to_hf(config: ModelConfig) -> dict:
    """ModelConfig -> config.json. qk_norm picks Qwen3, attention_bias (q/k/v bias) Qwen2, neither Llama."""
    if config.qk_norm and config.attention_bias:
        raise ValueError("save_hf: qk_norm with attention_bias (q/k/v bias) has no transformers "
                         "architecture (Qwen3's attention_bias also puts a bias on o_proj)")
    model_type = "qwen3" if config.qk_norm else "qwen2" if config.attention_bias else "llama"
    rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope_parameters = {**dataclasses.asdict(config.rope_scaling), "rope_theta": config.rope_theta}
    hf = {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        # Both spellings: transformers 5 reads rope_parameters, older versions rope_theta.
        "rope_theta": config.rope_theta,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": config.tie_embeddings,
        "dtype": config.param_dtype,  # the weights as stored (not the compute dtype)
        "torch_dtype": config.param_dtype,
        "use_cache": True,
    }
    if config.rope_scaling is not None:  # the legacy spelling too: transformers < 5 reads only this one
        hf["rope_scaling"] = dict(rope_parameters)
    if model_type in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = False
    if model_type != "qwen2":
        hf["attention_bias"] = False
    if model_type == "llama":
        hf["mlp_bias"] = False
    return hf


def _has_lora(params) -> bool:
    return any("lora_a" in str(keypath) for keypath, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def save_hf(path: str | os.PathLike, config: ModelConfig, params: dict, *, adapter_only: bool = False,
            base_model: str = "", dtype: str | None = None) -> pathlib.Path:
    """Write config.json + model.safetensors that transformers' AutoModelForCausalLM loads.

    The exported model is the policy exactly, by default: every tensor in float32 when LoRA adapters
    are folded (base + (alpha / r) A B computed in f32 against the base as given, which should be the
    base at its checkpoint precision), else the params as stored. `dtype="bfloat16"` (or "float32")
    writes every tensor in that dtype instead; a bf16 export of folded adapters rounds away part of
    the LoRA update, which is measured and printed (share of the update's entries lost, largest
    weight error). config.json's dtype is the dtype written.

    With LoRA adapters in `params` (`model.merge_lora`): by default they are folded into the weights
    (`model.fold_lora`: a plain model, nothing else needed to load it). `adapter_only=True` writes a
    PEFT adapter directory instead (adapter_config.json + adapter_model.safetensors, PEFT's layout:
    lora_A.weight [r, in], lora_B.weight [out, r]) that `peft.PeftModel.from_pretrained(base, path)`
    loads onto the base model; `base_model` is recorded as its base_model_name_or_path.

    Written into a temporary sibling directory, then renamed into place, so a crash never leaves
    a half-written checkpoint at `path`; an existing directory at `path` is replaced.
    """
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    lora = _has_lora(params)
    if adapter_only and not lora:
        raise ValueError("save_hf(adapter_only=True): params hold no LoRA adapters (model.merge_lora)")
    tensors = {}
    if adapter_only:
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            keys = [str(k.key) if hasattr(k, "key") else str(k.idx) for k in keypath]
            if keys[-1] not in ("lora_a", "lora_b"):
                continue
            which = "lora_A" if keys[-1] == "lora_a" else "lora_B"
            name = "base_model.model.model." + ".".join(keys[:-1]) + f".{which}.weight"
            tensors[name] = np.ascontiguousarray(np.asarray(jax.device_get(leaf), np.float32).T)
        files = {"adapter_config.json": json.dumps(_peft_config(config, base_model), indent=2) + "\n"}
        weights_file = "adapter_model.safetensors"
    else:
        if lora:
            folded = model_lib.fold_lora(config, params)  # f32 kernels: the exact policy
            written = jnp.dtype(dtype or jnp.float32)
            if written != jnp.float32:
                _report_rounding(params, folded, written)
            params = folded
        else:
            stored = {jnp.dtype(x.dtype) for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)}
            written = jnp.dtype(dtype) if dtype else max(stored, key=lambda d: d.itemsize)
        _dtype_name(written)  # float32 or bfloat16 only
        params = model_lib.cast_params(params, written)
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            name, transposed = _hf_name(keypath)
            arr = np.asarray(jax.device_get(leaf))  # gathers a sharded array to the host
            tensors[name] = np.ascontiguousarray(arr.T if transposed else arr)
        hf_config = _config_to_hf(dataclasses.replace(config, param_dtype=written.name))
        files = {"config.json": json.dumps(hf_config, indent=2) + "\n"}
        weights_file = _SAFETENSORS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        save_file(tensors, tmp / weights_file, metadata={"format": "pt"})  # transformers wants "pt"
        if path.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _report_rounding(adapted: dict, folded: dict, dtype) -> None:
    """Prints what writing the folded policy in `dtype` loses: the share of the LoRA update's
    non-zero entries that rounding erases (the exported weight equals the rounded base weight there),
    and the largest weight error against the exact f32 fold."""
    lost = total = 0
    worst = 0.0
    for keypath, exact in jax.tree_util.tree_flatten_with_path(folded)[0]:
        node = adapted
        for k in keypath[:-1]:
            node = node[k.key if hasattr(k, "key") else k.idx]
        if not isinstance(node, dict) or "lora_a" not in node or keypath[-1].key != "kernel":
            continue
        exact = np.asarray(jax.device_get(exact), np.float32)
        base = np.asarray(jax.device_get(node["kernel"]), np.float32)
        rounded = np.asarray(jnp.asarray(exact).astype(dtype).astype(jnp.float32))
        changed = exact != base
        lost += int((changed & (rounded == np.asarray(jnp.asarray(base).astype(dtype).astype(jnp.float32)))).sum())
        total += int(changed.sum())
        worst = max(worst, float(np.abs(rounded - exact).max()))
    print(f"save_hf: a {jnp.dtype(dtype).name} export of the folded LoRA policy loses "
          f"{100.0 * lost / max(total, 1):.1f} % of the LoRA update's {total} non-zero entries "
          f"(largest weight error {worst:.3g}); the default float32 export is exact", file=sys.stderr)


def _peft_config(config: ModelConfig, base_model: str) -> dict:
    """PEFT's adapter_config.json for our adapters (LoRA, no dropout, no bias, plain Linear layout)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model or None,
        "r": config.lora_rank, "lora_alpha": config.lora_alpha, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
        "target_modules": sorted(model_lib.LORA_TARGETS[t][1] for t in config.lora_targets),
    }


# --------------------------------------------------------------------------- GGUF


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, interleaved (re, im) pairs -> rotate_half halves.

    The converter did w.reshape(H, 2, hd/2, ...).swapaxes(1, 2); this is its inverse. w: [H*hd, ...]
    (a weight in HF [out, in] order, or a bias).
    """
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_config(reader, *, file: pathlib.Path, dtype: str, param_dtype: str = "float32") -> ModelConfig:
    """Llama-architecture GGUF metadata -> ModelConfig."""
    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            if default is None:
                raise ValueError(f"{file}: metadata {key} missing")
            return default
        return f.contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{file}: unsupported GGUF architecture {arch!r}; supported: llama")
    scaling = field("llama.rope.scaling.type", "none")
    if scaling not in ("none", ""):
        raise ValueError(f"{file}: RoPE scaling {scaling!r} is not implemented by grpo_jax.model")
    hidden = field("llama.embedding_length")
    heads = field("llama.attention.head_count")
    head_dim = field("llama.attention.key_length", hidden // heads)
    if field("llama.rope.dimension_count", head_dim) != head_dim:
        raise ValueError(f"{file}: partial rotary (rope.dimension_count != head_dim {head_dim}) is not implemented")
    names = {t.name for t in reader.tensors}
    return ModelConfig(
        vocab_size=field("llama.vocab_size", len(reader.fields["tokenizer.ggml.tokens"].data)),
        hidden_size=hidden,
        num_layers=field("llama.block_count"),
        num_heads=heads,
        num_kv_heads=field("llama.attention.head_count_kv", heads),
        head_dim=head_dim,
        intermediate_size=field("llama.feed_forward_length"),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names,  # llama.cpp omits output.weight when tied
        attention_bias="blk.0.attn_q.bias" in names,
        max_position_embeddings=field("llama.context_length", 2048),
        dtype=dtype,
        param_dtype=param_dtype,
    )


@functools.lru_cache(maxsize=2)
def _gguf_reader_cached(path: pathlib.Path, inode: int, mtime_ns: int, size: int):
    import gguf
    return gguf.GGUFReader(path)


def gguf_reader(path: str | os.PathLike):
    """`gguf.GGUFReader` of `path` (a read-only memory map), parsed once per process and file version:
    parsing the metadata of a 100 MB file takes seconds in pure Python (SmolLM2's 49k-token
    vocabulary), and a run reads the header, then the weights, then a notebook sets up the model again.
    Keyed on the path, inode, size and modification time, so a rewritten file is parsed afresh."""
    path = pathlib.Path(path).resolve()
    st = path.stat()
    return _gguf_reader_cached(path, st.st_ino, st.st_mtime_ns, st.st_size)


def load_gguf(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32,
              mesh=None) -> tuple[ModelConfig, dict]:
    """Load a Llama-architecture GGUF -> (ModelConfig, params), dequantised to f32 then cast to
    `param_dtype`; `dtype` is the compute dtype (config.dtype), as in `load_hf` (so `dtype` alone
    keeps f32 params).

    Tensor by tensor, like `load_hf`. Q/K rows are un-permuted back to the rotate_half layout.
    """
    import gguf

    path = hub.resolve(path, key="load_gguf(path)")  # a local file, or "owner/name/file.gguf" on the Hub
    if not path.is_file():
        raise ValueError(f"{path}: file missing")
    reader = gguf_reader(path)
    config = _gguf_config(reader, file=path, dtype=_dtype_name(dtype), param_dtype=_dtype_name(param_dtype))
    tensors = {t.name: t for t in reader.tensors}
    abstract = _abstract_params(config)
    expected = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        transposed = _hf_name(keypath)[1]
        expected[_gguf_name(keypath)] = tuple(reversed(leaf.shape)) if transposed else tuple(leaf.shape)
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name} missing")
        # GGML lists dimensions fastest-first: [in, out] for a weight whose numpy layout is [out, in].
        found = tuple(int(d) for d in reversed(tensors[name].shape))
        if found != shape:
            raise ValueError(f"{path}: tensor {name} has shape {list(found)}, expected {list(shape)}")
    if "rope_freqs.weight" in tensors:
        # llama.cpp's converter turns Llama 3.x "llama3" RoPE scaling into per-frequency divisors in
        # this tensor (the metadata keeps no scaling type): ignoring it would load silently wrong RoPE.
        raise ValueError(f"{path}: tensor rope_freqs.weight (llama.cpp's Llama 3.x RoPE scaling) is not "
                         "implemented by load_gguf; load the Hugging Face checkpoint with load_hf")
    for name in tensors:
        if name not in expected and not name.startswith("rope_"):
            raise ValueError(f"{path}: unexpected tensor {name}")

    def read(keypath, leaf):
        name = _gguf_name(keypath)
        t = tensors[name]
        arr = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected[name])  # HF [out, in] order
        if name.endswith(("attn_q.weight", "attn_q.bias")):
            arr = _unpermute_rope_rows(arr, config.num_heads)
        elif name.endswith(("attn_k.weight", "attn_k.bias")):
            arr = _unpermute_rope_rows(arr, config.num_kv_heads)
        return arr.T if _hf_name(keypath)[1] else arr

    return config, _build(config, mesh, read)


def run_options(m) -> dict:
    """The ModelConfig fields the run's config sets on any model, loaded or not (LoRA, scan, remat,
    attention kernel), from a config's `model` section; attention "auto" is this process's backend's
    kernel (`model.resolve_attention`; `plan` resolves it for its target first)."""
    attention = model_lib.resolve_attention(m.attention, platform=jax.default_backend(), dtype=m.dtype)
    return dict(lora_rank=m.lora_rank, lora_alpha=m.lora_alpha, lora_targets=m.lora_targets,
                scan_layers=m.scan_layers, remat=m.remat, attention=attention)


def model_config_from_config(config, tokenizer) -> ModelConfig:
    """The run's ModelConfig without reading any weight: `model.path`'s config.json or GGUF header, or
    the architecture of the `model` section (vocabulary: the tokenizer's size unless
    `model.vocab_size` says more), with the run's options (LoRA, scan, remat, attention)."""
    m = config.model
    dtypes = dict(dtype=_dtype_name(m.dtype), param_dtype=_dtype_name(m.param_dtype))
    if m.path:
        path = hub.resolve(m.path, key="model.path")  # a Hub name: its cached snapshot (fetched once)
        if not path.exists():
            raise ConfigError(f"config key `model.path`: {m.path!r} does not exist")
        if path.suffix == ".gguf":
            mc = _gguf_config(gguf_reader(path), file=path, **dtypes)  # header only: the file is mapped
        else:
            config_file = path / "config.json"
            if not config_file.is_file():
                raise ConfigError(f"config key `model.path`: {config_file} missing (not a Hugging Face "
                                  f"model directory or a .gguf file)")
            mc = _config_from_hf(json.loads(config_file.read_text()), file=config_file, **dtypes)
        return dataclasses.replace(mc, **run_options(m))
    vocab = m.vocab_size or len(tokenizer)
    if vocab < len(tokenizer):
        raise ConfigError(f"config key `model.vocab_size` = {vocab} is smaller than the tokenizer's "
                          f"{len(tokenizer)} tokens")
    return ModelConfig(
        vocab_size=vocab, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, intermediate_size=m.intermediate_size,
        rope_theta=m.rope_theta, rms_norm_eps=m.rms_norm_eps, tie_embeddings=m.tie_embeddings,
        attention_bias=m.attention_bias, qk_norm=m.qk_norm, max_position_embeddings=m.max_position_embeddings,
        **dtypes, **run_options(m))


def abstract_params(model_config: ModelConfig, mesh):
    """The param tree as ShapeDtypeStructs carrying the shardings the trainer gives them: a restore
    target, or what a run resumed from its own checkpoint needs instead of the weights."""
    abstract = _abstract_params(model_config)
    shardings = sharding.param_shardings(mesh, abstract)
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, shardings)


def from_config(config, tokenizer, mesh) -> tuple[ModelConfig, dict]:
    """The run's model: `model.path` (a HF directory or a .gguf) loaded sharded on `mesh`, or, with
    no path, a seeded random init of the architecture in the `model` section (vocabulary: the
    tokenizer's size unless `model.vocab_size` says more). Weights in `model.param_dtype`, compute
    in `model.dtype`."""
    m = config.model
    mc = model_config_from_config(config, tokenizer)  # config errors before any weight is read
    if m.path:
        path = hub.resolve(m.path, key="model.path")
        dtypes = dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), mesh=mesh)
        _, params = load_gguf(path, **dtypes) if path.suffix == ".gguf" else load_hf(path, **dtypes)
        return mc, params
    return mc, sharding.init_params_sharded(mc, jax.random.key(config.train.seed), mesh)
