"""Builds every part of a run from its config, each by the module that owns it:

    mesh        sharding.make_mesh          (mesh.data x mesh.fsdp over the devices)
    task        tasks.from_config           (problems, held-out sets, prompt, answer check)
    tokenizer   tokenizer.from_config       (and the EOS ids: tokenizer.eos_token_ids)
    prompts     tasks.fit_prompts           (those too long for sampling.max_prompt_length, dropped)
    verifiers   rewards.from_config         (rewards.weights, by name)
    model       weights.from_config         (a checkpoint, or a seeded random init)
    optimizer   train_step.optimizer_from_config

`setup` runs them in that order, so data and config errors come before any model work. The
training program (`grpo_jax.train`), the evaluation program (`grpo_jax.evaluate`) and the notebooks
(`grpo_jax.ablation`) all start here; nothing here imports a program.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import model as model_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax import sharding
from grpo_jax import tasks as tasks_lib
from grpo_jax import tokenizer as tok_lib
from grpo_jax import train_step as ts
from grpo_jax import weights as weights_lib


class Setup(NamedTuple):
    config: cfg_lib.Config
    workdir: pathlib.Path
    mesh: Any
    put: Callable  # numpy [N, ...] -> global array sharded over the batch axes
    tokenizer: Any
    model_config: model_lib.ModelConfig
    params: Any
    task: tasks_lib.Task
    step: int  # checkpoint step the params come from (0: none)
    eos_ids: tuple  # every id that ends a completion (tokenizer.eos_token_ids)
    prompt_counts: dict  # prompts dropped at data load for being too long (tasks.fit_prompts)
    verifiers: dict  # name -> (completion, example) -> float, the weighted ones (rewards.from_config)


def make_put(mesh) -> Callable:
    def put(x):
        x = np.asarray(x)
        sh = sharding.batch_sharding(mesh, x.ndim)
        # Every process holds the same full batch (it is a pure function of the step), so each one
        # supplies its own shards: correct on one host and on many.
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])
    return put


def reference_params(model_config: model_lib.ModelConfig, params):
    """The frozen reference policy: a copy of `params` stored in the compute dtype (it is only ever
    read by forwards that cast to that dtype anyway, so this changes no number)."""
    if model_config.param_dtype == model_config.dtype:
        return jax.tree.map(jnp.copy, params)
    return model_lib.cast_params(params, jnp.dtype(model_config.dtype))


def abstract_reference(model_config: model_lib.ModelConfig, abstract_params):
    """`reference_params` of an abstract param tree: the same shardings, floating leaves in the compute
    dtype (a restore target)."""
    dtype = jnp.dtype(model_config.dtype)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=x.sharding), abstract_params)


def _blend(ref_params, policy_params, alpha):
    def leaf(ref, policy):
        if not jnp.issubdtype(ref.dtype, jnp.floating):
            return ref
        mixed = alpha * policy.astype(jnp.float32) + (1.0 - alpha) * ref.astype(jnp.float32)
        return mixed.astype(ref.dtype)
    return jax.tree.map(leaf, ref_params, policy_params)


# Elementwise over leaves of identical shardings: the outputs keep the reference's shardings, which
# lets XLA write them into the donated reference's buffers (no second copy of the model at any time).
_blend_jit = jax.jit(_blend, donate_argnums=0)


def sync_reference(ref_params, policy_params, alpha):
    """TR-DPO reference refresh (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good
    Alignment"; TRL's SyncRefModelCallback): ref <- alpha * policy + (1 - alpha) * ref, leaf by leaf in
    f32, cast back to each reference leaf's dtype (the compute dtype, `reference_params`). alpha = 1
    copies the policy. `ref_params` is donated (invalid afterwards); the result keeps its shardings.
    `alpha` is traced (a float or f32[]): changing it does not recompile."""
    return _blend_jit(ref_params, policy_params, jnp.float32(alpha))


def checkpoint_tree(c: cfg_lib.Config, state, ref_params) -> dict:
    """What a checkpoint holds: the train state (with LoRA: the adapters and their optimizer state
    only), and the frozen reference when the KL term needs a copy of it (not with LoRA: the reference
    is the base model, which `model.path` or the seed gives back)."""
    return {"train": state, "ref": ref_params} if c.grpo.beta > 0 and ref_params is not None else {"train": state}


def abstract_adapters(model_config: model_lib.ModelConfig, mesh):
    """The LoRA adapters' tree as ShapeDtypeStructs carrying their shardings (a restore target)."""
    abstract = jax.eval_shape(lambda k: model_lib.init_lora(model_config, k), jax.random.key(0))
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        abstract, sharding.param_shardings(mesh, abstract))


def init_adapters(s: "Setup"):
    """Fresh LoRA adapters for the run's model (B = 0: the adapted model starts equal to the base),
    created already sharded like the parameters."""
    key = jax.random.fold_in(jax.random.key(s.config.train.seed), 2)
    shardings = jax.tree.map(lambda x: x.sharding, abstract_adapters(s.model_config, s.mesh))
    return jax.jit(lambda k: model_lib.init_lora(s.model_config, k), out_shardings=shardings)(key)


def check_context_length(config: cfg_lib.Config, model_config: model_lib.ModelConfig) -> None:
    """A prompt plus its completion longer than the model's positions would run on positions the
    model never saw (RoPE extrapolates silently): refused, naming the keys."""
    s = config.sampling
    need = s.max_prompt_length + s.max_new_tokens
    if need > model_config.max_position_embeddings:
        where = f"{config.model.path}'s config" if config.model.path else "model.max_position_embeddings"
        raise cfg_lib.ConfigError(
            f"config keys `sampling.max_prompt_length` + `sampling.max_new_tokens` = {s.max_prompt_length} + "
            f"{s.max_new_tokens} = {need} exceed the model's {model_config.max_position_embeddings} positions "
            f"({where}): lower them, or use a model with a longer context")


def setup(config: cfg_lib.Config, workdir, *, for_eval: bool = False, load_weights: bool = True) -> Setup:
    """Validates `config` against the devices and builds every part (module docstring).

    `for_eval`: the params are the policy of the workdir's latest checkpoint when there is one, and
    only they are read from it (not the optimizer state nor the reference; with LoRA the base comes
    from model.path and the adapters from the checkpoint). `load_weights=False` (a training run
    resuming from its own checkpoint): the weights at model.path are not read at all, `params` is
    None, and the trainer restores everything from the checkpoint; a LoRA run still loads its base,
    which checkpoints do not hold."""
    # The platform too: an attention kernel of another backend is refused here, not deep in a compile.
    cfg_lib.validate(config, num_devices=jax.device_count(), platform=jax.default_backend())
    use_compilation_cache(config)  # before anything compiles
    workdir = pathlib.Path(workdir)
    data, fsdp = cfg_lib.mesh_shape(config, jax.device_count())
    mesh = sharding.make_mesh(data=data, fsdp=fsdp, devices=jax.devices()[: data * fsdp])
    task = tasks_lib.from_config(config)  # data errors before any model work
    tokenizer = tok_lib.from_config(config)
    task, prompt_counts = tasks_lib.fit_prompts(task, tokenizer, config)
    verifiers = rewards_lib.from_config(config, task)
    eos_ids = tok_lib.eos_token_ids(tokenizer, config.model.path or None)
    model_config = weights_lib.model_config_from_config(config, tokenizer)  # no weight read yet
    check_context_length(config, model_config)
    lora = model_config.lora_rank > 0
    latest = None
    ckpt_dir = workdir / "checkpoints"
    if for_eval and ckpt_dir.exists():
        with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
            latest = ckpt.latest_step()
    step, params = 0, None
    if lora or (load_weights and latest is None):
        _, params = weights_lib.from_config(config, tokenizer, mesh)
        if lora:  # the frozen base is only read through casts to the compute dtype:
            params = model_lib.cast_params(params, model_config.dtype)  # store it so (7B in bf16: half)
    if latest is not None:  # the policy's weights alone from the checkpoint (4 bytes a parameter)
        trained = abstract_adapters(model_config, mesh) if lora else weights_lib.abstract_params(model_config, mesh)
        with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
            trained = ckpt.restore_partial({"train": {"params": trained}}, step=latest)["train"]["params"]
        step = latest
        params = model_lib.merge_lora(params, trained) if lora else trained
    return Setup(config, workdir, mesh, make_put(mesh), tokenizer, model_config, params, task, step,
                 eos_ids, prompt_counts, verifiers)


def compilation_cache_dir(value: str) -> str | None:
    """`train.compilation_cache` -> the directory it names, or None (off): "" is off; "auto" is
    $JAX_COMPILATION_CACHE_DIR when set, else the user's cache directory
    (${XDG_CACHE_HOME:-~/.cache}/grpo_jax/jax); anything else is a path (~ expanded)."""
    if not value:
        return None
    if value == "auto":
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            return os.environ["JAX_COMPILATION_CACHE_DIR"]
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(root, "grpo_jax", "jax")
    return os.path.expanduser(value)


def use_compilation_cache(config: cfg_lib.Config) -> str | None:
    """Points JAX's persistent compilation cache at `train.compilation_cache` (or turns it off) before
    anything compiles; returns the directory. Programs that take over a second to compile (the step,
    the sampler, the eval) are stored there and loaded by the next launch with the same shapes,
    sharding, devices and jax version (JAX's own cache key)."""
    from jax.experimental.compilation_cache import compilation_cache as cc
    path = compilation_cache_dir(config.train.compilation_cache)
    if path is None:
        if jax.config.jax_enable_compilation_cache:
            jax.config.update("jax_enable_compilation_cache", False)
            cc.reset_cache()  # forget a cache already opened
        return None
    if jax.config.jax_compilation_cache_dir != path or not jax.config.jax_enable_compilation_cache:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_enable_compilation_cache", True)
        cc.set_cache_dir(path)
        cc.reset_cache()  # a cache already opened on another directory is re-opened on this one
    return path


def check_workdir_config(workdir: pathlib.Path, config: cfg_lib.Config) -> None:
    """A workdir belongs to one experiment: resuming with a different config (other than a longer
    `train.steps` or eval/log intervals) would silently mix two runs."""
    path = workdir / "config.json"
    if not path.exists():
        return
    old = cfg_lib.to_dict(schedule_horizon(cfg_lib.from_dict(json.loads(path.read_text())), None))
    new = cfg_lib.to_dict(config)
    free = {"train.steps", "train.log_every", "train.eval_every", "train.samples_every",
            "train.checkpoint_every", "train.pass_k", "train.eval_batch_size", "task.eval_size",
            "train.compilation_cache", "train.loggers", "train.wandb_project", "train.wandb_name",
            "train.wandb_entity"}
    diff = [f"{s}.{k}" for s in new for k in new[s] if new[s][k] != old[s][k] and f"{s}.{k}" not in free]
    if diff:
        raise cfg_lib.ConfigError(f"workdir {str(workdir)!r} holds a run with a different config "
                                  f"(keys {', '.join(diff)}); use a new --workdir")


def schedule_horizon(config: cfg_lib.Config, workdir: pathlib.Path | None) -> cfg_lib.Config:
    """`optim.schedule_steps` resolved: when 0, the horizon of the run already in `workdir` (its
    config.json), else this launch's train.steps. A resume with a larger train.steps then keeps the
    learning-rate curve of the first launch instead of stretching it mid-run."""
    if config.optim.schedule_steps:
        return config
    path = None if workdir is None else workdir / "config.json"
    if path is not None and path.exists():
        old = cfg_lib.from_dict(json.loads(path.read_text()))
        horizon = old.optim.schedule_steps or old.train.steps
    else:
        horizon = config.train.steps
    config.optim.schedule_steps = horizon
    return config


def initialize_distributed(argv: list) -> list:
    """Starts `jax.distributed` when this program is one of several processes, and returns argv
    without the flags it read.

    Flags `--coordinator_address HOST:PORT --num_processes N --process_id I` (or the environment
    variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) start it explicitly;
    without them, a cluster that JAX detects by itself (a multi-host Cloud TPU VM, SLURM, Open MPI,
    Kubernetes) starts it with no arguments. Otherwise it is one process, as before.
    """
    flags, rest, args = {}, [], list(argv)
    names = ("--coordinator_address", "--num_processes", "--process_id")
    while args:
        arg = args.pop(0)
        name = arg.split("=", 1)[0]
        if name in names:
            if "=" in arg:
                flags[name[2:]] = arg.split("=", 1)[1]
            elif args:
                flags[name[2:]] = args.pop(0)
            else:
                raise cfg_lib.ConfigError(f"{arg} needs a value")
        else:
            rest.append(arg)
    for name in ("coordinator_address", "num_processes", "process_id"):
        value = flags.get(name) or os.environ.get(f"JAX_{name.upper()}")
        if value is not None and name != "coordinator_address":
            try:
                value = int(value)
            except ValueError:
                raise cfg_lib.ConfigError(f"--{name} (or JAX_{name.upper()}) must be an integer, got {value!r}") from None
        if value is not None:
            flags[name] = value
    try:
        from jax._src import distributed
        if distributed.global_state.client is not None:  # started already (a second run in-process)
            return rest
    except (ImportError, AttributeError):
        pass
    if flags:
        if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU has no other
        jax.distributed.initialize(**flags)
    else:
        try:
            from jax._src import clusters
            detected = [env.__name__ for env in clusters.ClusterEnv._cluster_types
                        if not env.opt_in_only_method and env.is_env_present()]
        except Exception:  # a private API: if it moved, fall back to one process
            detected = []
        if detected:
            jax.distributed.initialize()
    return rest
