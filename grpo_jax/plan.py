"""Will it fit? `python -m grpo_jax.plan --config experiments/NAME.py --topology v5e-8 [--config.a.b=v ...]`

Compiles the run's train step and sampler ahead of time for a TPU topology, from any CPU machine
(the TPU compiler ships in the `libtpu` wheel: `pip install 'grpo_jax[tpu]'`), or for this machine's
own backend (`--topology cpu`). Nothing is allocated and no weight is read: the parameters, the
optimizer state, the reference and the batch are `jax.ShapeDtypeStruct`s carrying the shardings the
trainer gives them (`sharding.param_shardings`, `train_step.state_shardings`, `batch_sharding`), and
a `model.path` contributes only its architecture (a HF directory's config.json, a GGUF's header).
It plans what the target compiles: model.attention "auto" is the target's kernel (splash on TPU),
and a kernel of another backend is refused (`config.validate(platform=...)`).

Printed per chip (the numbers XLA's memory analysis gives for one device of the mesh):
    weights, optimizer state, reference, batch   analytic, from each array's shard shape
    train step    arguments + temporaries = peak (params, optimizer state, reference, batch in;
                  the state is donated, so the outputs reuse its buffers)
    sampler       one call over the rows it really samples at once: `sampling.batch_size` rows (the
                  chunk), or all of a step's B*G rows, or with DAPO dynamic sampling one round's
                  ceil(B * factor) * G; its peak with the weights in `sampling.weight_layout`
                  (replicated: one full copy per chip; tensor: split over mesh.fsdp, see
                  grpo_jax.sampling), plus what stays
                  resident while it runs (optimizer state, reference; with LoRA the base and the
                  adapters' state next to the merged params it samples with); compiled with its
                  `sampling.engine` (a sweep program's vmapped sampler: lockstep)
    KV cache      analytic (`sampler_cache`), per chip, x L * 2 * KV * hd * bytes of model.dtype per
                  token: lockstep rows * (P + T) / chips; continuous the paged pool,
                  sampling.cache_tokens / chips (0: continuous.default_cache_tokens, S full
                  completions beside the prompts' blocks), with the slot count that runs without
                  preemption in that budget and the one that fits the chip beside the rest of the
                  sampler's peak (`slots_that_fit`)
    per chip      max of the two phases, against the chip's usable HBM
    FLOPs         per GRPO step, analytic (cost_analysis counts a loop body once, not per trip):
                  matmuls 2*rows*(D*(2*H*hd + 2*KV*hd) + 3*D*F) per layer, causal attention
                  4*H*hd*ctx per token per layer, LM head 2*D*V on the positions needing logits;
                  sampling = prefill over P (B rows: once per prompt) + T-1 decode steps (N rows),
                  reference = one forward over
                  P+T (beta > 0), policy = 3 x that forward per pass (mu passes), plus one forward
                  for the old log-probs when train.steps_per_generation > 1
                  (benchmarks/grpo_step.py's formula); with train.shared_prefix those forwards run
                  each prompt once per G / (K * M) rows. LoRA (model.lora_rank): the frozen weights
                  get no weight gradient, so the backward is 1 x their forward (the activations'
                  gradient) and 2 x for the attention scores and the adapters (2*rows*r*(in+out)
                  per target, in every forward of the policy and the sampler, not the reference).
                  Dynamic sampling: the sampler's rows are one round (at least one runs per step).
    remat         `.remat` instructions in the compiled HLO: near the limit the TPU compiler silently
                  recomputes tensors to fit (slower steps, no error).
    max B         the largest train.prompts_per_step that fits: an ESTIMATE from one compile (the
                  temporaries taken as linear in B, conservative since some are fixed), or with
                  `--search N` up to N more compiles of the train step, doubling / halving B.
Running out of HBM is a compile error on TPU (RESOURCE_EXHAUSTED ... CompileTimeHbmOom: "required
(19.72G) exceeds available HBM (15.75G)"): it is reported as fits=false with both numbers.

The last line is for scripts:
    RESULT fits=true|false per_chip_gib=... hbm_gib=... temp_gib=... params_gib=... opt_state_gib=...
           flops_per_step=... compile_s=...
(per_chip_gib: the larger phase; temp_gib: the train step's temporaries, or the sampler's when they
are larger; compile_s: both compiles together). Exit status 0 whether or not it fits, 2 on errors.

Topologies: v5e-N / v6e-N (N chips: 1, 4, 8 on one host; 16 and more as hosts of 2x2 chips), v5p-N /
v4-N (N TensorCores = 2 per chip, hosts of 2x2x1 chips, v4 as megacore), or the explicit forms
`v5e:4x4`, `v5p:2x2x2` (hosts of up to 2x2x1 chips beyond 8 chips). Multi-host topologies compile
from this one process: the compile-only devices of every host are visible.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax import build
from grpo_jax import config as cfg_lib
from grpo_jax import continuous
from grpo_jax import hub
from grpo_jax import model as model_lib
from grpo_jax import sampling
from grpo_jax import sharding
from grpo_jax import tokenizer as tok_lib
from grpo_jax import train_step as ts

GiB = 1024 ** 3
LIBTPU_PIN = "0.0.42"  # jax 0.10.2's [tpu] extra pins libtpu 0.0.42.*; pyproject's `tpu` extra too
# Usable HBM per chip (GiB): what the TPU compiler allows (v5e: 16 GiB chips, 15.75 measured in its
# CompileTimeHbmOom message); the others are the nominal size minus the same 1/64 reserve.
HBM_GIB = {"v5e": 15.75, "v6e": 31.5, "v5p": 93.5, "v4": 31.5}
USAGE = ("usage: python -m grpo_jax.plan --config experiments/NAME.py --topology v5e-8|v5e:4x4|cpu|local "
         "[--search N] [--cells C] [--config.section.key=value ...]")


class PlanError(Exception):
    """A plan that cannot be made (no libtpu, unknown topology, unsupported model file)."""


class Topology(NamedTuple):
    name: str  # as given
    generation: str  # v5e, v6e, v5p, v4, or this machine's backend (cpu, gpu, tpu: `local_topology`)
    devices: list
    hosts: int
    hbm_gib: float  # usable memory per chip


# ------------------------------------------------------------------------------------ topology
def _dims_2d(chips: int) -> tuple[int, int]:
    table = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
    if chips not in table:
        raise PlanError(f"no v5e/v6e slice has {chips} chips; use one of {sorted(table)}")
    return table[chips]


def _dims_3d(chips: int) -> tuple[int, int, int]:
    table = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
             128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}
    if chips not in table:
        raise PlanError(f"no v5p/v4 slice has {chips} chips; use a TensorCore count of {sorted(2 * c for c in table)}")
    return table[chips]


def parse_topology(name: str) -> tuple[str, str, tuple[int, int, int]]:
    """Friendly or explicit topology name -> (generation, libtpu topology name, chips per host).

    v5e-8 -> ("v5e", "v5e:2x4", (2, 4, 1)); v5e-16 -> ("v5e", "v5e:4x4", (2, 2, 1)): 4 hosts;
    v5p-16 -> ("v5p", "v5p:2x2x2", (2, 2, 1)); "v5e:4x4" as given, hosts of up to 2x2 chips.
    """
    m = re.fullmatch(r"(v5e|v6e|v5p|v4)([-:])(\d+(?:x\d+)*)", name.strip().lower().replace("v5litepod", "v5e"))
    if not m:
        raise PlanError(f"unknown topology {name!r}: use v5e-8, v6e-4, v5p-16, v4-8, an explicit "
                        f"v5e:4x4 / v5p:2x2x2, or cpu")
    gen, sep, rest = m.groups()
    flat = gen in ("v5e", "v6e")
    if sep == "-" and "x" not in rest:
        count = int(rest)
        if flat:
            dims = _dims_2d(count)
        else:  # v5p-N / v4-N count TensorCores, 2 per chip
            if count % 2:
                raise PlanError(f"{name}: v5p/v4 names count TensorCores (2 per chip); use an even number")
            dims = _dims_3d(count // 2)
    else:
        dims = tuple(int(d) for d in rest.split("x"))
        if len(dims) != (2 if flat else 3):
            raise PlanError(f"{name}: {gen} topologies are {'AxB' if flat else 'AxBxC'}")
    chips = math.prod(dims)
    dims3 = (*dims, 1) if flat else dims
    if flat and chips <= 8:
        per_host = dims3  # v5e/v6e: up to 8 chips on one host
    else:
        per_host = tuple(min(d, b) for d, b in zip(dims3, (2, 2, 1)))
    return gen, f"{gen}:{'x'.join(map(str, dims))}", per_host


def check_libtpu() -> str:
    """The installed libtpu version; a PlanError saying what to install when it is absent."""
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        raise PlanError(
            "libtpu is not installed, so there is no TPU compiler on this machine. Install the `tpu` "
            f"extra (pip install 'grpo_jax[tpu]', i.e. libtpu=={LIBTPU_PIN}.*, the version jax "
            f"{jax.__version__} pins) or plan for this machine's own backend with --topology cpu.")
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (TPU_LIBRARY_PATH)"


def get_topology(name: str) -> Topology:
    if name == "local":  # this machine's own devices (a GPU VM, a TPU VM's chips), their own memory
        return local_topology()
    if name == "cpu":
        devices = jax.devices()
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
        # Simulated CPU devices share the host's memory: each one's share is the budget.
        return Topology(name, "cpu", devices, 1, total / len(devices))
    gen, topo_name, per_host = parse_topology(name)
    version = check_libtpu()
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{gen}-{topo_name.split(':')[1]}")  # silences warnings
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu takes a machine-wide lock file meant for real chips; compile-only devices need none, and
    # without this a second plan (or a test) running at the same time fails with "ABORTED ... lockfile".
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    try:
        topo = topologies.get_topology_desc(
            platform="tpu", topology_name=topo_name, chip_config_name="megacore" if gen == "v4" else "default",
            chips_per_host_bounds=per_host, num_slices=1)
    except Exception as error:  # noqa: BLE001  (libtpu raises RuntimeError / JaxRuntimeError / its own)
        hint = ("" if version.startswith(LIBTPU_PIN) else
                f" Installed libtpu {version} does not match the {LIBTPU_PIN}.* that jax {jax.__version__} "
                f"pins: pip install 'libtpu=={LIBTPU_PIN}.*' (the grpo_jax[tpu] extra).")
        raise PlanError(f"libtpu {version} could not build topology {topo_name} "
                        f"(chips per host {per_host}): {str(error).splitlines()[0] if str(error) else error!r}.{hint}") from None
    devices = list(topo.devices)
    hosts = len({getattr(d, "process_index", 0) for d in devices})
    return Topology(name, gen, devices, hosts, HBM_GIB[gen])


def local_topology(*, memory_gib: float | None = None) -> Topology:
    """This machine's own devices, as a sweep or a run uses them: per device, the memory its backend
    reports (`bytes_limit` of an accelerator's memory_stats) or, for CPU devices, an equal share of
    the host's RAM; `memory_gib` overrides it (headroom for other processes, or a test)."""
    devices = jax.devices()
    backend = jax.default_backend()
    if memory_gib is None:
        if backend == "cpu":
            memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB / len(devices)
        else:
            limit = (devices[0].memory_stats() or {}).get("bytes_limit")
            if not limit:
                raise PlanError(f"the {backend} backend reports no memory limit for {devices[0]}: give the "
                                f"memory per device explicitly")
            memory_gib = limit / GiB
    hosts = len({d.process_index for d in devices})
    return Topology("local", backend, devices, hosts, float(memory_gib))


# ------------------------------------------------------------------------------------ model
def model_config(config: cfg_lib.Config, tokenizer) -> model_lib.ModelConfig:
    """The run's ModelConfig without any weight: config.json of `model.path`, or the architecture in
    the `model` section (as weights.from_config builds it for a random init)."""
    from grpo_jax import weights as weights_lib
    m = config.model
    lora = weights_lib.run_options(m)
    if m.path:
        path = hub.resolve(m.path, key="model.path")  # a Hub name: its cached snapshot (without_weights)
        if path.suffix == ".gguf":  # the header holds the architecture; no tensor is read (memory-mapped)
            mc = weights_lib._gguf_config(weights_lib.gguf_reader(path), file=path, dtype=m.dtype,
                                          param_dtype=m.param_dtype)
            return dataclasses.replace(mc, **lora)
        file = path / "config.json"
        if not file.is_file():
            raise cfg_lib.ConfigError(f"config key `model.path`: {str(file)!r} does not exist")
        mc = weights_lib._config_from_hf(json.loads(file.read_text()), file=file, dtype=m.dtype,
                                         param_dtype=m.param_dtype)
        return dataclasses.replace(mc, **lora)
    vocab = m.vocab_size or len(tokenizer)
    return model_lib.ModelConfig(
        vocab_size=vocab, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, intermediate_size=m.intermediate_size,
        rope_theta=m.rope_theta, rms_norm_eps=m.rms_norm_eps, tie_embeddings=m.tie_embeddings,
        attention_bias=m.attention_bias, qk_norm=m.qk_norm, max_position_embeddings=m.max_position_embeddings, dtype=m.dtype,
        param_dtype=m.param_dtype, **lora)


def _with_shardings(abstract, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def per_chip_bytes(tree) -> int:
    """Bytes of one device's shard of every array in an abstract tree (ShapeDtypeStruct + sharding)."""
    def one(x):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        return math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return sum(one(x) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------ FLOPs
def layer_matmul_flops(c, rows: float) -> float:
    d, f, hd = c.hidden_size, c.intermediate_size, c.head_dim
    return 2.0 * rows * (d * (2 * c.num_heads * hd + 2 * c.num_kv_heads * hd) + 3 * d * f)


def lora_matmul_flops(c, rows: float) -> float:
    """One layer's LoRA adapters (x A then (x A) B on each target) over `rows` tokens."""
    d, f, r = c.hidden_size, c.intermediate_size, c.lora_rank
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    sizes = {"q": d + q, "k": d + kv, "v": d + kv, "o": q + d, "gate": d + f, "up": d + f, "down": f + d}
    return 2.0 * rows * r * sum(sizes[name] for name in c.lora_targets)


def forward_parts(c, rows: float, ctx_sum: float, head_rows: float, *, adapters: bool = False) -> dict:
    """One forward's FLOPs by kind: rows tokens through every layer (the weight matmuls), sum over tokens
    of attention context ctx_sum (scores and their use), head_rows logits; with `adapters`, the LoRA
    adapters' matmuls (c.lora_rank > 0)."""
    return {"matmul": c.num_layers * layer_matmul_flops(c, rows),
            "attention": c.num_layers * 4.0 * c.num_heads * c.head_dim * ctx_sum,
            "head": 2.0 * head_rows * c.hidden_size * c.vocab_size,
            "adapters": c.num_layers * lora_matmul_flops(c, rows) if adapters and c.lora_rank else 0.0}


def forward_flops(c, rows: float, ctx_sum: float, head_rows: float, *, adapters: bool = False) -> float:
    """rows tokens through every layer, sum over tokens of attention context ctx_sum, head_rows logits
    (also benchmarks/grpo_step.py's count); `forward_parts` summed."""
    return sum(forward_parts(c, rows, ctx_sum, head_rows, adapters=adapters).values())


def backward_flops(parts: dict, *, lora: bool) -> float:
    """The backward of a forward whose FLOPs are `parts` (`forward_parts`). Full fine-tuning: 2 x the
    forward (each matmul's input gradient and its weight gradient; scores and values for attention).
    LoRA: the frozen weights (layers, LM head) get no weight gradient, only the input gradient (1 x);
    attention has no weights (2 x); the trained adapters 2 x."""
    if not lora:
        return 2.0 * sum(parts.values())
    return parts["matmul"] + parts["head"] + 2.0 * (parts["attention"] + parts["adapters"])


def step_flops(c: model_lib.ModelConfig, *, n: int, p: int, t: int, use_reference: bool,
               num_iterations: int = 1, steps_per_generation: int = 1, shared_group: int = 1,
               prefill_group: int = 1, sample_rows: int | None = None, lora: bool = False) -> dict:
    """Analytic FLOPs of one GRPO step over the padded shapes (module docstring). `shared_group` g > 1
    (train.shared_prefix): the update's forwards encode each prompt once per g rows. `prefill_group`
    G: the sampler prefills each prompt once for its G rows (sampling.sample(group_size=G)).
    `sample_rows`: rows the sampler decodes (default n; DAPO dynamic sampling: one round's).
    `lora`: adapters (c.lora_rank) trained, the weights frozen; the reference is the base, adapters off."""
    ns = n if sample_rows is None else sample_rows
    # The sampler prefills each prompt once (ns / prefill_group rows), then decodes all ns rows.
    prefill = forward_flops(c, ns * p / prefill_group, ns / prefill_group * p * (p + 1) / 2, ns / prefill_group,
                            adapters=lora)
    decode = sum(forward_flops(c, ns, ns * (p + s), ns, adapters=lora) for s in range(1, t))
    # n / g prompts of p tokens, then n completions of t tokens each seeing its prompt (g = 1: the
    # plain forward over n rows of p + t, whose causal context sum is the same expression).
    shape = (n * p / shared_group + n * t, n / shared_group * p * (p + 1) / 2 + n * (t * p + t * (t + 1) / 2), n * t)
    policy = forward_parts(c, *shape, adapters=lora)
    full = sum(policy.values())
    return {"sample": prefill + decode, "reference": forward_flops(c, *shape) if use_reference else 0.0,
            "old_logps": full if steps_per_generation > 1 else 0.0,
            "policy": (full + backward_flops(policy, lora=lora)) * num_iterations}


# ------------------------------------------------------------------------------------ KV cache
def kv_bytes_per_token(mc: model_lib.ModelConfig) -> int:
    """One token's keys and values over every layer in the cache's dtype (model.dtype, the compute
    dtype): L x 2 x KV x hd x bytes."""
    return mc.num_layers * 2 * mc.num_kv_heads * mc.head_dim * jnp.dtype(mc.dtype).itemsize


class SamplerCache(NamedTuple):
    """The KV cache of one sampler call (analytic; `sampler_cache`)."""
    engine: str  # lockstep | continuous (a sweep program's vmapped sampler is lockstep)
    rows: int  # rows of the call
    slots: int  # decode slots over all devices (lockstep: every row decodes at once)
    tokens: int  # token slots over all devices: lockstep rows x (P + T); continuous the pool's budget
    per_chip: int  # bytes on one device
    devices: int  # devices the rows are split over
    prompts: int  # continuous: prompts per device (each prefilled once into its blocks)


def continuous_shape(config: cfg_lib.Config, *, rows: int, devices: int) -> tuple[int, int, int]:
    """(slots, cache_tokens, prompts per device) of a continuous-engine call of `rows` rows split over
    `devices`, as rollout.sample_rows and continuous.sample resolve them: sampling.slots clamped to
    the rows (0 = every row), sampling.cache_tokens (0 = `continuous.default_cache_tokens`, the
    budget with which no row is ever preempted: S / D full completions beside the prompts, per device)."""
    s = config.sampling
    return continuous.resolve(rows=rows, prompt_length=s.max_prompt_length, max_new_tokens=s.max_new_tokens,
                              group_size=config.grpo.group_size, devices=devices, slots=s.slots,
                              block_size=s.block_size, cache_tokens=s.cache_tokens)


def sampler_cache(config: cfg_lib.Config, mc: model_lib.ModelConfig, *, rows: int, devices: int,
                  engine: str | None = None) -> SamplerCache:
    """The KV cache one sampler call of `rows` rows holds, per chip, over `devices` devices (rows
    split over them), by `engine` (default sampling.engine), x `kv_bytes_per_token`:
        lockstep    every row's P + T slots: ceil(rows / D) x (P + T) tokens per chip
        continuous  the paged pool: floor(cache_tokens / D / block_size) blocks of block_size tokens
                    per chip (`continuous_shape`), whatever the rows
    The prefill's transient dense cache of the prompts (B x P tokens) is not counted in either."""
    s = config.sampling
    engine = engine or s.engine
    per_token = kv_bytes_per_token(mc)
    if engine == "lockstep":
        length = s.max_prompt_length + s.max_new_tokens
        return SamplerCache("lockstep", rows, rows, rows * length, -(-rows // devices) * length * per_token,
                            devices, 0)
    slots, budget, prompts = continuous_shape(config, rows=rows, devices=devices)
    pool = budget // devices // s.block_size * s.block_size  # the pool's token slots on one device
    return SamplerCache("continuous", rows, slots, budget, pool * per_token, devices, prompts)


def slots_that_fit(config: cfg_lib.Config, mc: model_lib.ModelConfig, cache: SamplerCache, pool_bytes: float) -> int:
    """The most decode slots (over all devices, a multiple of them, at most the call's rows) whose
    full completions fit a pool of `pool_bytes` per device beside the prompts' blocks, so that no
    row is ever preempted: per device floor((pool_bytes / kv_bytes_per_token - bs * (1 + prompts *
    ceil(P / bs))) / T); 0 when not even one does."""
    s = config.sampling
    fixed = s.block_size * (1 + cache.prompts * continuous.prompt_blocks(s.max_prompt_length, s.block_size))
    per_device = int((pool_bytes / kv_bytes_per_token(mc) - fixed) // s.max_new_tokens)
    return max(0, min(per_device, cache.rows // cache.devices)) * cache.devices


# ------------------------------------------------------------------------------------ compile
class Compiled(NamedTuple):
    ok: bool
    seconds: float
    args: int  # bytes per chip
    temp: int
    code: int  # generated code (counted in the peak on TPU)
    peak: int
    remat: int  # `.remat` instructions in the compiled HLO
    required: float | None  # GiB the compiler asked for, when out of HBM
    available: float | None


_UNITS = {"": 1 / GiB, "B": 1 / GiB, "K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}


def _oom_numbers(message: str) -> tuple[float | None, float | None]:
    """'... (19.72G) exceeds available HBM (15.75G)' -> (19.72, 15.75) in GiB."""
    m = re.search(r"\(([\d.]+)\s*([KMGT]?)i?B?\)\s*exceeds\s+available\s+HBM\s*\(([\d.]+)\s*([KMGT]?)i?B?\)", message)
    if not m:
        return None, None
    return float(m.group(1)) * _UNITS[m.group(2)], float(m.group(3)) * _UNITS[m.group(4)]


def compile_one(jitted, *args, **kwargs) -> Compiled:
    start = time.perf_counter()
    try:
        compiled = jitted.lower(*args, **kwargs).compile()
    except Exception as error:  # noqa: BLE001
        text = str(error)
        if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text:
            raise
        required, available = _oom_numbers(text)
        if required is None:
            print(f"out of memory, unparsed: {text[:2000]}", file=sys.stderr)
        return Compiled(False, time.perf_counter() - start, 0, 0, 0, 0, 0, required, available)
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    args_b = int(getattr(mem, "argument_size_in_bytes", 0) or 0)
    temp = int(getattr(mem, "temp_size_in_bytes", 0) or 0)
    out = int(getattr(mem, "output_size_in_bytes", 0) or 0)
    alias = int(getattr(mem, "alias_size_in_bytes", 0) or 0)
    code = int(getattr(mem, "generated_code_size_in_bytes", 0) or 0)
    # The TPU compiler's peak counts arguments, temporaries and code; the CPU one may not count the
    # arguments: never report less than what is live at once by the sizes alone.
    peak = max(int(getattr(mem, "peak_memory_in_bytes", 0) or 0), args_b + temp + max(out - alias, 0))
    try:
        remat = len(re.findall(r"%\S*\.remat\S*\s*=", compiled.as_text()))
    except Exception:  # noqa: BLE001  (no HLO text on some backends)
        remat = 0
    return Compiled(True, seconds, args_b, temp, code, peak, remat, None, None)


class Programs(NamedTuple):
    """Everything needed to compile the step and the sampler for one batch size."""
    train: Any  # (prompts_per_step) -> Compiled
    sample: Any  # () -> Compiled
    resident: dict  # name -> bytes per chip
    model_config: model_lib.ModelConfig
    sampler_rows: int  # rows of the compiled sampler call (config.sampler_chunk_rows)
    shared_group: int  # rows per prompt of the update's shared-prefix forward (1: none)
    cache: SamplerCache  # the compiled sampler call's KV cache (analytic)


def platform_of(topo: Topology) -> str:
    """The jax platform a topology compiles for: tpu, or this machine's own backend for `cpu` and
    `local`."""
    return jax.default_backend() if topo.name in ("cpu", "local") or topo.generation == "cpu" else "tpu"


def target_config(config: cfg_lib.Config, topo: Topology) -> cfg_lib.Config:
    """The config as the target runs it: validated for its devices and platform (a kernel of another
    backend is a ConfigError naming model.attention), model.attention "auto" made the target's kernel
    (the plan runs on a CPU but compiles for a TPU: this process's backend would pick xla)."""
    platform = platform_of(topo)
    cfg_lib.validate(config, num_devices=len(topo.devices), platform=platform)
    m = config.model
    attention = model_lib.resolve_attention(m.attention, platform=platform, dtype=m.dtype)
    return dataclasses.replace(config, model=dataclasses.replace(m, attention=attention))


def build_programs(config: cfg_lib.Config, topo: Topology, *, cells: int = 1) -> Programs:
    """The train step and sampler AOT-compilable for `topo`; `cells` > 1: those of a sweep program of
    that many cells (`sweep.program_functions`: each cell its own train state, the reference shared
    when every cell starts from model.path without SFT (or LoRA's base), else one per cell)."""
    config = target_config(config, topo)
    c, g = config, config.grpo
    data, fsdp = cfg_lib.mesh_shape(c, len(topo.devices))
    mesh = sharding.make_mesh(data=data, fsdp=fsdp, devices=topo.devices[: data * fsdp])
    tokenizer = tok_lib.from_config(c)
    eos_ids = tok_lib.eos_token_ids(tokenizer, c.model.path or None)
    mc = model_config(c, tokenizer)
    key = jax.random.key(0)
    replicated = NamedSharding(mesh, PartitionSpec())
    base = jax.eval_shape(lambda k: model_lib.init_params(mc, k), key)
    lora = mc.lora_rank > 0
    if lora:  # as build.setup: the frozen base is stored in the compute dtype
        base = jax.eval_shape(lambda p: model_lib.cast_params(p, mc.dtype), base)
    base = _with_shardings(base, sharding.param_shardings(mesh, base))
    use_reference = g.beta > 0
    optimizer = ts.optimizer_from_config(c)
    if lora:
        trained = jax.eval_shape(lambda k: model_lib.init_lora(mc, k), key)
        trained = _with_shardings(trained, sharding.param_shardings(mesh, trained))
        second = base
    else:
        trained = base
        second = None
        if use_reference:
            ref = jax.eval_shape(lambda p: build.reference_params(mc, p), base)
            second = _with_shardings(ref, sharding.param_shardings(mesh, ref))
    state_sh = ts.state_shardings(mesh, optimizer, trained, entropy=g.adaptive_entropy)
    opt_state = _with_shardings(jax.eval_shape(optimizer.init, trained), state_sh.opt_state)
    controller = ({k: jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated) for k in ("coef", "last")}
                  if g.adaptive_entropy else None)  # grpo.adaptive_entropy's state (TrainState.entropy)
    state = ts.TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), trained, opt_state, controller)
    second_sh = jax.tree.map(lambda x: x.sharding, second) if second is not None else None
    pure_step = ts.build_train_step(mc, optimizer, use_reference=use_reference, lora=lora, **ts.step_options(c))
    step_fn = ts.jit_train_step(pure_step, mesh, state_sh, second_sh)
    hp = ts.HParams(*([jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)] * len(ts.HParams._fields)))
    P, T = c.sampling.max_prompt_length, c.sampling.max_new_tokens
    lead = ()  # the cell axis of a sweep program
    if cells > 1:
        from grpo_jax import sweep

        def stack(tree):
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct((cells, *x.shape), x.dtype, sharding=NamedSharding(
                mesh, PartitionSpec(None, *x.sharding.spec))), tree)

        shared = lora or (bool(c.model.path) and c.sft.steps == 0)
        state = stack(state)
        if second is not None and not shared:
            second = stack(second)
        second_sh = jax.tree.map(lambda x: x.sharding, second) if second is not None else None
        step_fn, program_sampler = sweep.program_functions(
            c, mc, optimizer, mesh, eos_ids=eos_ids, use_reference=use_reference,
            second_axis=None if second is None or shared else 0,
            state_sh=jax.tree.map(lambda x: x.sharding, state), second_sh=second_sh)
        cell_scalar = jax.ShapeDtypeStruct((cells,), jnp.float32, sharding=replicated)
        hp = ts.HParams(*([cell_scalar] * len(ts.HParams._fields)))
        lead = (cells,)

    def rows(b):
        return b * g.group_size

    def sds(shape, dtype):
        if lead:
            return jax.ShapeDtypeStruct((*lead, *shape), dtype, sharding=sweep.program_batch_sharding(mesh))
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))

    def train(b):
        n = rows(b)
        batch = ts.Batch(sds((n, P), jnp.int32), sds((n, P), jnp.int32), sds((n, T), jnp.int32),
                         sds((n, T), jnp.float32), sds((n,), jnp.float32),
                         sds((n,), jnp.float32) if g.dynamic_sampling else None,  # the trainer's row mask
                         sds((n,), jnp.float32) if g.kl_in_reward else None)  # the rewards it penalises
        if lead:
            return compile_one(step_fn, state, second, batch, hp, cell_scalar)
        return compile_one(step_fn, state, second, batch, hp)

    sampler_rows = cfg_lib.sampler_chunk_rows(c)  # what one rollout.sample_rows call decodes at once
    row_devices = mesh.size  # rows are split over every device of the mesh (sharding.batch_sharding)
    # A sweep program's vmapped sampler is lockstep whatever sampling.engine says (the same samples).
    cache = sampler_cache(c, mc, rows=sampler_rows, devices=row_devices, engine="lockstep" if lead else None)

    def sample():
        n = sampler_rows
        # The sampler runs on the policy: the trained params, or with LoRA the merged base (same shapes).
        policy = base if lora else trained
        prompt_sh = sharding.batch_sharding(mesh, 2) if mesh.size > 1 else None
        key_sds = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
        if lead:  # the program's sampler: every cell's policy, prompts and key
            keys = jax.ShapeDtypeStruct((cells, *key.shape), key.dtype, sharding=replicated)
            return compile_one(program_sampler, state.params, base if lora else None, sds((n, P), jnp.int32),
                               sds((n, P), jnp.int32), keys, cell_scalar)
        args = (mc, policy, sds((n, P), jnp.int32), sds((n, P), jnp.int32), key_sds,
                jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated),
                jax.ShapeDtypeStruct((len(eos_ids),), jnp.int32, sharding=replicated))
        common = dict(max_new_tokens=T, top_k=c.sampling.top_k, top_p=c.sampling.top_p, min_p=c.sampling.min_p,
                      prompt_sharding=prompt_sh, group_size=g.group_size, logps=False)  # as rollout.generate
        if cache.engine == "continuous":  # the paged engine at the slots and budget the run resolves
            return compile_one(continuous._sample_jit, *args, **common, truncated_logps=False, slots=cache.slots,
                               block_size=c.sampling.block_size, cache_tokens=cache.tokens)
        return compile_one(sampling._sample_jit, *args, **common, weight_layout=c.sampling.weight_layout)

    n = rows(c.train.prompts_per_step)
    batch_bytes = (2 * n * P * 4 + 2 * n * T * 4 + n * 4) // len(topo.devices[: data * fsdp])
    per_cell = cells if lead else 1
    resident = {"weights": per_chip_bytes(trained if not lora else base) * (1 if lora else per_cell),
                "adapters": per_chip_bytes(trained) * per_cell if lora else 0,
                "opt_state": per_chip_bytes(opt_state) * per_cell,
                "reference": per_chip_bytes(second) if use_reference and not lora else 0,
                "batch": batch_bytes * per_cell, "mesh": (data, fsdp)}
    return Programs(train, sample, resident, mc, sampler_rows, pure_step.shared_group_size, cache)


# ------------------------------------------------------------------------------------ report
def _gib(x: float) -> str:
    return f"{x / GiB:.3f}"


def _fit_batches(config: cfg_lib.Config, devices: int) -> int:
    """prompts_per_step must give N = B*G divisible by devices * K * M (batch sharding and the split)."""
    unit = devices * config.train.steps_per_generation * config.train.num_minibatches
    return unit // math.gcd(unit, config.grpo.group_size)


def without_weights(config: cfg_lib.Config) -> tuple[cfg_lib.Config, str | None]:
    """A plan needs no weights: when model.path does not exist here (planning from a laptop for a TPU
    VM that holds the checkpoint), the architecture the experiment writes in its model section is
    planned instead (with the built-in tokenizer's EOS, which changes no memory figure). A Hub name
    counts as here when huggingface_hub's cache holds it; a plan never downloads. Returns the config
    to plan and a note, or the config itself and None when the path exists or is empty."""
    m = config.model
    if not m.path or pathlib.Path(m.path).exists() or hub.in_cache(m.path) is not None:
        return config, None
    if m.vocab_size <= 0:
        raise cfg_lib.ConfigError(
            f"config key `model.path`: {m.path!r} does not exist, and the model section gives no architecture "
            f"to plan instead (model.vocab_size is 0): set model.vocab_size, hidden_size, num_layers, ... "
            f"as experiments/qwen2_5_1_5b_gsm8k.py does")
    model = dataclasses.replace(m, path="", tokenizer="")
    return (dataclasses.replace(config, model=model),
            f"model.path {m.path!r} is not here: planning the architecture written in the model section")


def plan(config: cfg_lib.Config, topo: Topology, *, search: int = 0, out=None, cells: int = 1) -> dict:
    config, weights_note = without_weights(config)
    data, fsdp = cfg_lib.mesh_shape(config, len(topo.devices))
    asked = config.model.attention
    config = target_config(config, topo)
    if cells < 1:
        raise cfg_lib.ConfigError(f"--cells {cells}: need at least 1")
    progs = build_programs(config, topo, cells=cells)
    mc, res = progs.model_config, progs.resident
    B, G = config.train.prompts_per_step, config.grpo.group_size
    P, T = config.sampling.max_prompt_length, config.sampling.max_new_tokens
    hbm = topo.hbm_gib * GiB

    def say(line=""):
        print(line, file=out or sys.stdout, flush=True)

    if weights_note:
        say(f"note: {weights_note}")
    say(f"plan: {topo.name} ({topo.generation}, {len(topo.devices)} chips over {topo.hosts} host(s), "
        f"{topo.hbm_gib:.2f} GiB usable per chip); mesh data={data} x fsdp={fsdp}")
    say(f"model: D={mc.hidden_size} L={mc.num_layers} H={mc.num_heads}/KV={mc.num_kv_heads} hd={mc.head_dim} "
        f"F={mc.intermediate_size} V={mc.vocab_size} params {mc.param_dtype} compute {mc.dtype}"
        f"{f' LoRA r={mc.lora_rank}' if mc.lora_rank else ''}; batch B={B} x G={G} = {B * G} rows, "
        f"P={P} + T={T} tokens, M={config.train.num_minibatches} K={config.train.steps_per_generation} "
        f"mu={config.grpo.num_iterations} beta={config.grpo.beta}")
    if cells > 1:
        say(f"sweep program: {cells} cells (grpo_jax.sweep: one train state per cell, vmapped step and sampler; "
            f"the memory below is all of them)")
    per_call = cfg_lib.sampler_rows(config)
    say(f"attention: {mc.attention}{f' (model.attention={asked})' if asked != mc.attention else ''}; "
        f"shared prefix: " + (f"{progs.shared_group} rows per prompt in each update chunk" if progs.shared_group > 1
                              else "off" if not config.train.shared_prefix else
                              "off (cudnn)" if not model_lib.shares_prefix(mc) else "none (K * M does not divide G)"))
    whole = f"dynamic-sampling round of {per_call} rows" if config.grpo.dynamic_sampling else f"step's {per_call} rows"
    say(f"sampler: {progs.sampler_rows} rows per call ("
        + (f"sampling.batch_size; {per_call // progs.sampler_rows} calls per {whole})" if config.sampling.batch_size
           else f"all of a {whole})"))
    say("compiling the train step ...")
    tr = progs.train(B)
    say(f"  {tr.seconds:.1f} s")
    say("compiling the sampler ...")
    sp = progs.sample()
    say(f"  {sp.seconds:.1f} s")
    compile_s = tr.seconds + sp.seconds

    lora = mc.lora_rank > 0
    # While sampling, the train state and the reference stay resident next to the sampler's own
    # arguments (with LoRA the sampler reads a merged copy; base and adapters stay too).
    beside = res["opt_state"] + res["reference"] + (res["weights"] + res["adapters"] if lora else 0)
    train_peak = tr.peak if tr.ok else (tr.required or 0) * GiB
    sample_peak = sp.peak + beside if sp.ok else (sp.required or 0) * GiB + beside
    per_chip = max(train_peak, sample_peak)
    if not tr.ok and tr.available:
        hbm = tr.available * GiB
    elif not sp.ok and sp.available:
        hbm = sp.available * GiB
    fits = tr.ok and sp.ok and per_chip <= hbm
    flops = step_flops(mc, n=B * G, p=P, t=T, use_reference=config.grpo.beta > 0,
                       num_iterations=config.grpo.num_iterations,
                       steps_per_generation=config.train.steps_per_generation, shared_group=progs.shared_group,
                       prefill_group=G, sample_rows=per_call, lora=lora)
    total_flops = sum(flops.values())

    say("")
    say(f"per chip (GiB)          {'':>10}")
    say(f"  weights               {_gib(res['weights']):>10}   ({f'{mc.dtype}, frozen base' if lora else mc.param_dtype})")
    if lora:
        say(f"  LoRA adapters         {_gib(res['adapters']):>10}")
    say(f"  optimizer state       {_gib(res['opt_state']):>10}")
    say(f"  reference             {_gib(res['reference']):>10}")
    say(f"  batch                 {_gib(res['batch']):>10}")
    if tr.ok:
        say(f"  train step: args {_gib(tr.args)}, temporaries {_gib(tr.temp)}, code {_gib(tr.code)} -> peak {_gib(tr.peak)}"
            f"{f'   ({tr.remat} .remat instructions: the compiler recomputes tensors to fit)' if tr.remat else ''}")
    else:
        say(f"  train step: OUT OF HBM at compile: requires {tr.required} GiB, available {tr.available} GiB")
    layout = config.sampling.weight_layout
    if data * fsdp == 1:
        how = "one device: the weights as stored"
    elif layout == "replicated":
        how = "the params gathered whole onto every chip, once per sampler call"
    else:
        whole = mc.num_heads % fsdp == 0 and mc.num_kv_heads % fsdp == 0
        how = (f"tensor-parallel over mesh.fsdp={fsdp}: MLP and vocabulary split, attention "
               + ("heads split" if whole else f"replicated ({mc.num_heads}/{mc.num_kv_heads} heads do not "
                                               f"divide {fsdp})"))
    say(f"  sampler weights: {layout} ({how})")
    kv = progs.cache
    per_token = kv_bytes_per_token(mc)
    kv_line = (f"  sampler KV cache: {kv.engine}, {_gib(kv.per_chip)} GiB per chip ({kv.tokens:,} tokens over "
               f"{kv.devices} chip(s) x {per_token / 1024:g} KiB per token: L x 2 x KV x hd x {mc.dtype}; ")
    slots_fit = None
    if kv.engine == "lockstep":
        say(kv_line + f"{kv.rows} rows x (P + T) = {P + T})")
    else:
        sc = config.sampling
        say(kv_line + f"a paged pool of {kv.per_chip // per_token:,} tokens per chip in blocks of {sc.block_size}, "
            + ("sampling.cache_tokens" if sc.cache_tokens else "the default budget: no row is ever preempted")
            + f"); {kv.slots} decode slots over {kv.rows} rows per call (lockstep would hold "
            f"{_gib(sampler_cache(config, mc, rows=kv.rows, devices=kv.devices, engine='lockstep').per_chip)} GiB)")
        budget_slots = slots_that_fit(config, mc, kv, kv.per_chip)
        if sp.ok:  # the pool's share of the sampler's peak is the part the slot count moves
            slots_fit = slots_that_fit(config, mc, kv, hbm - (sample_peak - kv.per_chip))
        say(f"  sampler slots: {budget_slots} run without preemption in this budget"
            + (f"; {slots_fit} fit in {hbm / GiB:.2f} GiB per chip beside the rest of the sampler's peak "
               f"(sampling.slots, with sampling.cache_tokens=0)" if slots_fit is not None else ""))
    if sp.ok:
        say(f"  sampler:    args {_gib(sp.args)}, temporaries {_gib(sp.temp)}, code {_gib(sp.code)} -> peak {_gib(sp.peak)}"
            f" + resident {_gib(beside)} = {_gib(sample_peak)}"
            f"{f'   ({sp.remat} .remat instructions)' if sp.remat else ''}")
    else:
        say(f"  sampler:    OUT OF HBM at compile: requires {sp.required} GiB, available {sp.available} GiB")
    say(f"  per chip peak         {_gib(per_chip):>10}  of {hbm / GiB:.2f} GiB usable -> "
        f"{'FITS' if fits else 'DOES NOT FIT'}")
    say(f"FLOPs per step (analytic, whole mesh): {total_flops:.4g} = sample {flops['sample']:.3g} + reference "
        f"{flops['reference']:.3g} + old log-probs {flops['old_logps']:.3g} + policy fwd+bwd {flops['policy']:.3g}"
        f"; per chip {total_flops / (data * fsdp):.4g}"
        + ("  (sample: one dynamic-sampling round; each further round adds as much)"
           if config.grpo.dynamic_sampling else ""))

    # Largest prompts_per_step.
    unit = _fit_batches(config, data * fsdp)
    max_b, how = None, ""
    if search > 0 and tr.ok is not None:
        lo, hi, b = (B, None, B * 2) if fits else (None, B, B // 2)
        tries = 0
        while tries < search and b and b >= unit:
            b = max(unit, b // unit * unit)
            say(f"search: compiling the train step at prompts_per_step={b} ...")
            r = progs.train(b)
            tries += 1
            compile_s += r.seconds
            ok = r.ok and r.peak + 0 <= hbm
            say(f"  {'fits' if ok else 'does not fit'} ({_gib(r.peak) if r.ok else r.required} GiB, {r.seconds:.1f} s)")
            if ok:
                lo = b
                b = b * 2 if hi is None else (lo + hi) // 2
            else:
                hi = b
                b = b // 2 if lo is None else (lo + hi) // 2
            if lo is not None and hi is not None and hi - lo <= unit:
                break
        max_b, how = lo, (f"searched: {tries} extra compile(s) of the train step" +
                          ("" if hi is not None else ", upper end not reached"))
    if max_b is None:
        if tr.ok:
            fixed = tr.args
            per_prompt = tr.temp / B
            room = hbm - fixed
            # A chunked sampler (sampling.batch_size) holds the same rows whatever B is.
            sampler_per_prompt = sp.temp / B if sp.ok and not config.sampling.batch_size else 0.0
            sroom = hbm - (sp.args + beside) if sp.ok else room
            cand = min(room / per_prompt if per_prompt else math.inf,
                       sroom / sampler_per_prompt if sampler_per_prompt else math.inf)
        else:
            fixed = res["weights"] + res["adapters"] + res["opt_state"] + res["reference"]
            per_prompt = max(tr.required * GiB - fixed, 1) / B if tr.required else math.inf
            cand = (hbm - fixed) / per_prompt
        max_b = int(cand // unit * unit) if math.isfinite(cand) and cand >= unit else None
        how = ("ESTIMATE from one compile, temporaries taken as linear in prompts_per_step (conservative); "
               "--search N compiles to check")
    say(f"largest prompts_per_step that fits: {max_b if max_b else 'none (not even ' + str(unit) + ')'}"
        f"  [{how}; multiples of {unit}]")
    if not fits:  # what shrinks the phase that does not fit
        if sample_peak > train_peak:
            if config.sampling.engine == "continuous":
                say("to fit the sampler: lower sampling.slots (the pool holds a full completion per slot) or "
                    "sampling.cache_tokens, lower sampling.batch_size, or model.dtype=bfloat16 (a bf16 KV cache)")
            else:
                say("to fit the sampler: lower sampling.batch_size (rows per sampler call, whole groups), use "
                    "sampling.engine=continuous with fewer sampling.slots than rows (a paged KV cache), "
                    "sampling.weight_layout=tensor, mesh.fsdp, or model.dtype=bfloat16 (a bf16 KV cache)")
        else:
            say("to fit the train step: raise train.num_minibatches (gradient accumulation), use "
                "model.scan_layers=true with model.remat=full, model.attention=auto (a flash kernel), mesh.fsdp, "
                "model.dtype=bfloat16 or model.lora_rank, or lower train.prompts_per_step or the lengths")
    max_cells = cells if fits else None
    if cells > 1 and not fits:  # how many cells one program can carry here: halve until it fits
        c_try = cells // 2
        while c_try >= 1 and max_cells is None:
            say(f"cells: compiling the program at {c_try} cells ...")
            r = build_programs(config, topo, cells=c_try)
            t_, s_ = r.train(B), r.sample()
            compile_s += t_.seconds + s_.seconds
            beside_c = r.resident["opt_state"] + r.resident["reference"] + (
                r.resident["weights"] + r.resident["adapters"] if lora else 0)
            if t_.ok and s_.ok and max(t_.peak, s_.peak + beside_c) <= hbm:
                max_cells = c_try
            c_try //= 2
        say(f"largest cells per program that fits: {max_cells or 'none'}  "
            f"[python -m grpo_jax.sweep ... --cells_per_program {max_cells or 1}]")
    result = {"fits": fits, "per_chip_gib": per_chip / GiB, "hbm_gib": hbm / GiB, "cells": cells,
              "max_cells": max_cells,
              "temp_gib": max(tr.temp if tr.ok else 0, sp.temp if sp.ok else 0) / GiB,
              "params_gib": (res["weights"] + res["adapters"]) / GiB, "opt_state_gib": res["opt_state"] / GiB,
              "flops_per_step": total_flops, "compile_s": compile_s,
              "max_prompts_per_step": max_b, "remat": tr.remat + sp.remat,
              "train_peak_gib": train_peak / GiB, "sample_peak_gib": sample_peak / GiB,
              "sampler_engine": kv.engine, "kv_cache_gib": kv.per_chip / GiB, "sampler_slots": kv.slots,
              "slots_that_fit": slots_fit}
    say(f"RESULT fits={'true' if fits else 'false'} per_chip_gib={per_chip / GiB:.4g} hbm_gib={hbm / GiB:.4g} "
        f"temp_gib={result['temp_gib']:.4g} params_gib={result['params_gib']:.4g} "
        f"opt_state_gib={result['opt_state_gib']:.4g} flops_per_step={total_flops:.4g} compile_s={compile_s:.1f}"
        + (f" cells={cells} max_cells={max_cells or 0}" if cells > 1 else ""))
    return result


def parse_args(argv) -> tuple[cfg_lib.Config, str, int, int]:
    path, topology, search, cells, overrides = None, None, 0, 1, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if arg.startswith("--config."):
            overrides.append(cfg_lib.override_item(arg, args))
            continue
        if name not in ("--config", "--topology", "--search", "--cells"):
            raise cfg_lib.ConfigError(f"unknown argument {arg!r}; {USAGE}")
        if not eq:
            if not args:
                raise cfg_lib.ConfigError(f"{arg} needs a value")
            value = args.pop(0)
        if name == "--config":
            path = value
        elif name == "--topology":
            topology = value
        else:
            try:
                number = int(value)
            except ValueError:
                raise cfg_lib.ConfigError(f"{name} must be an integer, got {value!r}") from None
            search, cells = (number, cells) if name == "--search" else (search, number)
    if path is None or topology is None:
        raise cfg_lib.ConfigError(USAGE)
    return cfg_lib.load_config(path, overrides), topology, search, cells


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(USAGE + "\n\n" + __doc__)
        return 0
    from grpo_jax import platforms
    platforms.skip_absent_tpu()  # no libtpu (and its stderr noise) on a machine without a TPU
    try:
        config, topology, search, cells = parse_args(argv)
        topo = get_topology(topology)
        plan(config, topo, search=search, cells=cells)
    except (cfg_lib.ConfigError, PlanError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
