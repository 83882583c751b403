"""The typed config schema: every default lives here, once.

An experiment is a Python module with `get_config() -> Config` that starts from `Config()` and
changes only what differs (big_vision / flax-examples convention). The command line adds dotted
overrides on top:

    python -m grpo_jax.train --config experiments/dapo.py --workdir runs/dapo --config.grpo.beta=0.0

Every section is a slotted dataclass, so assigning a misspelt attribute in an experiment module is
an AttributeError at once. `validate` checks every field's type and value and raises `ConfigError`
naming the key and what is allowed, before any model is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import pathlib
import types
import typing
from typing import Any, Sequence

from grpo_jax import ConfigError  # noqa: F401  (raised here; re-exported as config.ConfigError)
from grpo_jax import continuous  # the paged engine's minimum budget (sampling.cache_tokens)
# Each set of allowed values lives once, in the module that implements it.
from grpo_jax.advantages import ADVANTAGE_ESTIMATORS, REWARD_AGGREGATIONS
from grpo_jax.advantages import SCALES as SCALE_REWARDS
from grpo_jax.losses import CLIPPED_LOSS_TYPES, IMPORTANCE_LEVELS, KL_ESTIMATORS, LOSS_TYPES
from grpo_jax.metrics import LOGGERS, loggers_problem, parse_loggers
from grpo_jax.model import ATTENTION_BACKENDS, ATTENTION_CHOICES, DTYPES, LORA_TARGETS, REMAT_POLICIES
from grpo_jax.rewards import BUILTIN_REWARDS
from grpo_jax.rewards import check_metric_names as check_reward_metric_names
from grpo_jax.rewards import STYLES as PROMPT_STYLES
from grpo_jax.sampling import ENGINES, WEIGHT_LAYOUTS
from grpo_jax.tasks import BUILTIN_TASKS, SOURCES
from grpo_jax.tasks.arithmetic import WORKINGS
from grpo_jax.tasks.records import ANSWER_FORMATS
from grpo_jax.train_step import SCHEDULES


@dataclasses.dataclass(slots=True)
class ModelSection:
    # A local Hugging Face directory or a .gguf file, or a Hub name "owner/name[@revision]" (or
    # "owner/name/file.gguf") fetched into huggingface_hub's cache (grpo_jax.hub; HF_HUB_OFFLINE=1:
    # from the cache only). Empty: a random-init model with the architecture below (the quick start).
    path: str = ""
    # Tokenizer: a HF dir / tokenizer.json / .gguf / Hub name (its tokenizer files). Empty: the model
    # path's own tokenizer, or the built-in character tokenizer when path is empty too.
    tokenizer: str = ""
    # Compute dtype: matmul inputs (activations and weights) are cast to it inside each layer; norms,
    # attention softmax and logits stay f32. bfloat16 halves activation memory and bandwidth.
    dtype: str = "float32"
    # Stored, optimised weight dtype (Adam's moments follow it). Keep float32: Adam updates at
    # lr 1e-6 on bf16 weights of scale 0.02 round away for ~98 % of them (the master-weights
    # problem; Flax param_dtype / MaxText weight_dtype). The frozen reference is stored in `dtype`.
    param_dtype: str = "float32"
    # Training with param_dtype=bfloat16 (bf16 master weights, and Adam's moments with them) is
    # refused unless this is true: updates below bf16's resolution round away.
    allow_bf16_params: bool = False
    # LoRA (Hu et al. 2021): rank 0 trains every weight; rank r > 0 trains only rank-r adapters
    # W + (alpha / r) A B on the targets (comma-separated, any of q, k, v, o, gate, up, down), and
    # the reference policy is the base model with the adapters off (no second copy of the weights).
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "q,k,v,o,gate,up,down"
    # Memory / compile time / kernels of the training forward (the numbers do not change):
    # scan_layers runs the layers under one lax.scan (one compiled layer instead of num_layers: use
    # it for real models; the unrolled default is faster on CPU for small ones); remat is what each
    # layer keeps for the backward: none | full | dots | dots_with_batch (grpo_jax.model.REMAT_POLICIES);
    # attention: xla (CPU and anywhere; [rows, H, L, L] f32 scores) | cudnn (NVIDIA flash attention,
    # bf16) | splash (TPU Pallas kernel) | auto (splash on TPU, cudnn on a GPU in bf16, else xla) |
    # splash_interpret (the kernel in the Pallas interpreter: slow, for checking it on CPU). A kernel
    # on another backend than its own is refused before any work.
    scan_layers: bool = False
    remat: str = "none"
    attention: str = "xla"
    # Architecture of a random-init model (ignored when `path` is set: the checkpoint says).
    # vocab_size 0 means "the tokenizer's size".
    vocab_size: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    attention_bias: bool = True  # Qwen2-style q/k/v bias
    qk_norm: bool = False  # Qwen3-style per-head RMSNorm on q and k
    max_position_embeddings: int = 512


@dataclasses.dataclass(slots=True)
class TaskSection:
    # A built-in task (grpo_jax.tasks.BUILTIN_TASKS), or your own as "package.module:function", a
    # function config -> grpo_jax.tasks.Task (build it with grpo_jax.tasks.records_task).
    name: str = "arithmetic"
    # File or directory of the dataset (gsm8k / math500 / svamp / records), or a Hub dataset name
    # "owner/name[/folder][@revision]" (e.g. openai/gsm8k; records: openai/gsm8k/main) read from
    # huggingface_hub's cache; with source "tfds", the TFDS data_dir. Not needed for synthetic tasks.
    data_path: str = ""
    # "files": read data_path directly; "tfds": a prepared TensorFlow Datasets dataset
    # (grpo_jax.tasks.tfds; tfds_name names it) read with tfds.data_source, no TensorFlow needed.
    source: str = "files"
    tfds_name: str = "grpo_jax_gsm8k"
    # The generic reader (task.name="records"): JSONL / JSON / parquet / HF `datasets` on disk, with
    # these fields holding the problem and the gold answer; answer_format says how to read the gold
    # ("auto": GSM8K's "#### N", else a \boxed{}, else the raw value).
    question_key: str = "question"
    answer_key: str = "answer"
    answer_format: str = "auto"
    # Training problems from another dataset than the eval set. math500 needs it: MATH-500 is an
    # eval set, so training reads the MATH release here (its problems not in MATH-500, PRM800K's
    # split). Empty for the other tasks: their own train split.
    train_data_path: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    prompt_style: str = "reasoning"
    # Prefix each question with the style's format instruction. Off for models that learn the
    # format in SFT (the quick start): the instruction is ~50 tokens of constant prompt per row.
    instruction: bool = True
    chat_template: bool = False  # apply the tokenizer's chat template to prompts
    system_prompt: str = ""
    # Synthetic tasks.
    num_digits: int = 2
    working: str = "equation"  # arithmetic SFT target: "equation" (12+35=47) or "columns" (addition)
    num_numbers: int = 4  # countdown
    # held-out problems for eval; 0 = the whole eval split (arithmetic: each held-out problem once,
    # in a fixed order, the same for every train.seed: 799 with 2 digits)
    eval_size: int = 500


@dataclasses.dataclass(slots=True)
class RewardSection:
    # {name: weight} of the verifiers summed into the scalar reward: built-ins
    # (grpo_jax.rewards.BUILTIN_REWARDS: correctness, format, overlong = DAPO's soft punishment) or
    # your own as "package.module:function", a function (completion: str, example) -> float.
    # On the command line: --config.rewards.weights.format=0.1 or --config.rewards.weights='{"format": 0.1}'.
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"correctness": 1.0})
    overlong_cache: int = 16  # DAPO: length of the linear ramp before sampling.max_new_tokens
    timeout_seconds: float = 1.0
    # code_tests: 1 iff every hidden test passes (else the fraction passed).
    code_all_or_nothing: bool = False


@dataclasses.dataclass(slots=True)
class GRPOSection:
    group_size: int = 8  # G completions per prompt
    epsilon: float = 0.2  # lower clip: ratio >= 1 - epsilon
    epsilon_high: float | None = None  # upper clip; None = epsilon (DAPO clip-higher sets it)
    beta: float = 0.04  # k3 KL coefficient; 0 skips the reference model
    # The objective and its aggregation (grpo_jax.losses: each type's formula and paper): grpo | bnpo |
    # dr_grpo | dapo (token sum over the generation batch's tokens / K) | cispo (MiniMax-M1: clipped,
    # stop-gradient IS weight x log-prob) | sapo (soft sigmoid gate) | luspo (length-unbiased GSPO) |
    # vespo (Gamma weight of the sequence ratio).
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    importance_level: str = "token"  # "sequence" = GSPO
    num_iterations: int = 1  # mu: updates per sampled batch
    advantage_eps: float = 1e-4
    # INTELLECT-2 two-sided clip: the unclipped ratio is capped at delta too (bounds the update of
    # negative-advantage tokens whose ratio explodes); None = off. Must exceed 1 + epsilon_high.
    delta: float | None = None
    cispo_max_weight: float = 5.0  # cispo: the IS weight is min(ratio, this) (ScaleRL's eps_max; TRL's epsilon_high)
    sapo_temperature_pos: float = 1.0  # sapo: gate temperature for A > 0
    sapo_temperature_neg: float = 1.05  # sapo: gate temperature for A <= 0
    vespo_k_pos: float = 2.0  # vespo: Gamma weight phi(w) = e^lam * w^k * e^(-lam * w), for A >= 0 ...
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0  # ... and for A < 0
    vespo_lambda_neg: float = 2.0
    # KL(pi || pi_ref) per token: k3 (Schulman; the default, >= 0, unbiased), k1 (log ratio), k2 (half
    # its square); grpo_jax.losses.kl_estimate.
    kl_estimator: str = "k3"
    # Put the KL in the reward instead of the loss (verl use_kl_in_reward): each row's reward becomes
    # r - beta * sum_t kl_t (sampling policy vs reference, grpo.kl_estimator), advantages are taken
    # from that inside the update step, and the loss carries no KL term. Needs grpo.beta > 0. Note: a
    # group whose task rewards tie is then ranked by its KL alone, and grpo.scale_rewards=group scales
    # those small differences to unit std (as verl's GRPO does); REINFORCE++ pairs it with
    # grpo.advantage_estimator=reinforce_pp (whitening over the batch), or use scale_rewards=batch.
    kl_in_reward: bool = False
    # Entropy bonus: loss -= entropy_coef * mean token entropy (over the tokens the policy term uses).
    entropy_coef: float = 0.0
    # Skywork-OR1 adaptive entropy: entropy_coef is the start value; after each optimizer update it
    # moves by entropy_coef_delta up (entropy <= entropy_target) or down, within [min, max], and is
    # applied only while the last update's entropy was <= entropy_target (as TRL 1.16).
    adaptive_entropy: bool = False
    entropy_target: float = 0.2
    entropy_coef_delta: float = 0.005
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    # "Beyond the 80/20 rule" (Wang et al. 2025): only the top quantile of completion tokens by
    # entropy carry the policy loss (0.2 in the paper); 1.0 = every token.
    top_entropy_quantile: float = 1.0
    # Baseline of the advantage (grpo_jax.advantages): grpo (group mean, scaled by grpo.scale_rewards) |
    # rloo (leave-one-out mean of the other G-1 rewards, scaled likewise) | reinforce_pp (REINFORCE++
    # baseline: group mean subtracted, then whitened over the batch's tokens; grpo.scale_rewards unused).
    advantage_estimator: str = "grpo"
    # Several rewards: sum_then_normalize (weighted sum, then the advantage) | normalize_then_sum (GDPO:
    # each reward normalised within its group, weighted sum, then normalised over the batch).
    multi_objective_aggregation: str = "sum_then_normalize"
    # TR-DPO reference refresh (TRL sync_ref_model): every ref_sync_every GRPO steps the reference
    # becomes ref_sync_alpha * policy + (1 - ref_sync_alpha) * reference. 0 = a frozen reference.
    ref_sync_every: int = 0
    ref_sync_alpha: float = 0.6
    # DAPO: a completion that hit sampling.max_new_tokens without an EOS is left out of the loss
    # (its reward still counts in its group's advantages), as TRL's mask_truncated_completions.
    mask_truncated_completions: bool = False
    # DAPO dynamic sampling: sample ceil(prompts_per_step * dynamic_sampling_factor) prompts per
    # round, keep only groups whose rewards are not all equal, and repeat (up to
    # dynamic_sampling_max_rounds rounds) until prompts_per_step groups are kept; if still short,
    # train on those kept with the missing rows masked out. Shapes stay static.
    dynamic_sampling: bool = False
    dynamic_sampling_factor: float = 2.0
    dynamic_sampling_max_rounds: int = 3
    # What "signal" means for the filter (and for the logged zero_std_fraction): a group is kept when
    # this differs within it. "correctness" (DAPO; verl's filter_groups.metric=acc): a group all right
    # or all wrong is dropped even when a shaping term (format, overlong, your own) differs, which with
    # grpo.scale_rewards=group would otherwise blow a tiny difference up to full-size advantages.
    # "reward": the total weighted reward. Any other name of rewards.weights: that reward alone.
    dynamic_sampling_metric: str = "correctness"


@dataclasses.dataclass(slots=True)
class SamplingSection:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # min-p: keep the tokens whose probability is >= min_p x the most likely token's; 0 = off.
    min_p: float = 0.0
    # With top_k / top_p / min_p truncating, the trainer scores each sampled token under the same
    # truncated, renormalised distribution it was drawn from (exact on-policy ratios); the KL to the
    # reference stays on the full distribution. False: score on the full distribution (before 2026-12).
    truncated_logps: bool = True
    max_prompt_length: int = 64
    max_new_tokens: int = 64
    # Where the sampler keeps the weights on a mesh (grpo_jax.sampling): replicated (one full copy per
    # chip, gathered once per sampler call; no collective on weights in the decode loop) | tensor
    # (tensor-parallel over mesh.fsdp: MLP, attention heads and vocabulary split, 1/fsdp of the
    # weights per chip; small activation collectives in each decode step). tensor fits models whose
    # replicated weights would not fit beside the KV cache (a 7B model in bf16 on 16 GiB chips).
    weight_layout: str = "replicated"
    # Rows per sampler call, whole groups of grpo.group_size: a step's B * G rows (with DAPO dynamic
    # sampling each round's ceil(B * factor) * G) are sampled in chunks of this many, one compiled
    # sampler reused for each (chunk i draws with fold_in(key, i)), so the KV cache holds one chunk.
    # 0 = all rows in one call (with the step's key itself, as before chunks existed).
    batch_size: int = 0
    # Decode engine (grpo_jax.sampling.ENGINES), for training and eval alike: lockstep (every row of a
    # call decodes until the last one ends) | continuous (grpo_jax.continuous: S decode slots over a
    # paged KV cache; a slot whose row ends takes the next queued row, so no step waits on the longest
    # completion). The same samples: each row draws token t with fold_in(fold_in(key, row), t), so
    # switching engines changes time and memory, not the samples (log-probs to float round-off).
    # continuous runs our ModelConfig models (not a protocol model) with sampling.weight_layout =
    # replicated on a mesh. Sweeps' vmapped sampler is lockstep whatever this says (same samples).
    engine: str = "lockstep"
    # continuous: decode slots S per sampler call (a call's rows are queued through them); 0 = one per
    # row (no queue). Above the rows of a call it is that call's rows. On a mesh each of the D
    # devices runs S / D slots over its own rows (a multiple of D).
    slots: int = 0
    # continuous: tokens per block of the paged KV cache; must divide sampling.max_new_tokens. A row
    # holds ceil(P / block_size) blocks of its prompt (shared by its group) plus one block per
    # block_size tokens it has generated.
    block_size: int = 16
    # continuous: the KV pool's token budget over all devices (memory = budget x L x 2 x KV x hd x
    # the model.dtype's bytes). At least, per device, one scratch block + each prompt's blocks + one
    # full completion: block_size * (1 + prompts * ceil(P / block_size)) + max_new_tokens. A smaller
    # budget than S full completions preempts the youngest rows (re-decoded later: same samples,
    # more time). 0 = enough that no row is ever preempted (S full completions beside the prompts).
    cache_tokens: int = 0


@dataclasses.dataclass(slots=True)
class OptimSection:
    learning_rate: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    # GRPO steps the cosine schedule spans (its horizon); 0 = train.steps of the run's FIRST launch.
    # The trainer records it in the workdir's config.json, so resuming with a larger train.steps
    # keeps the curve (and refuses steps past its end, which would train at learning rate 0).
    schedule_steps: int = 0
    b1: float = 0.9
    b2: float = 0.99
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # clip by global norm; 0 disables (not advised: see README)


@dataclasses.dataclass(slots=True)
class TrainSection:
    steps: int = 200
    prompts_per_step: int = 16  # B; the batch is B * G completions
    # K optimizer steps per sampled batch (TRL steps_per_generation, PPO minibatches): the B * G
    # rows are split into K parts, one update each; old log-probs are the sampling policy's.
    steps_per_generation: int = 1
    num_minibatches: int = 1  # gradient accumulation inside each of the K updates
    # Cut padding (grpo_jax/buckets.py): the sampler (training and eval) gets the prompts cut to the
    # batch's longest prompt, the update also the completions cut to the longest completion, each
    # rounded up to one of <= 4 static widths per axis (quarters of sampling.max_prompt_length /
    # max_new_tokens), so a few shapes compile. Same loss up to float round-off; off = always [N, max].
    length_buckets: bool = True
    # Shared-prefix update (model.grouped_hidden_states, "Prefix Grouper"): the update's policy /
    # reference forwards encode each prompt once per group instead of G times; same numbers to
    # round-off. Shares G / (steps_per_generation * num_minibatches) rows per prompt in each chunk,
    # nothing when that product does not divide grpo.group_size, nor with model.attention=cudnn
    # (cuDNN's masks cannot express a group's prompt keys; xla and splash share).
    shared_prefix: bool = True
    seed: int = 0
    log_every: int = 1
    eval_every: int = 50  # 0 disables eval
    eval_batch_size: int = 128
    pass_k: int = 0  # also report pass@k / maj@k with k samples on eval steps; 0 = off
    checkpoint_every: int = 50
    max_checkpoints: int = 3
    samples_every: int = 50  # completion samples into metrics.jsonl; 0 disables
    # Where metrics go, comma-separated (grpo_jax.metrics.LOGGERS): jsonl (workdir/metrics.jsonl;
    # required: resume and grpo_jax.report read it), tensorboard (workdir/tb), wandb (Weights & Biases;
    # optional: pip install 'grpo_jax[wandb]'; WANDB_MODE=offline needs no account). E.g. jsonl,wandb.
    loggers: str = "jsonl,tensorboard"
    # wandb only: its project, run name ("" = the workdir's name) and entity ("" = wandb's default).
    wandb_project: str = "grpo_jax"
    wandb_name: str = ""
    wandb_entity: str = ""
    # Persistent compilation cache (a second launch loads the step and sampler instead of compiling
    # them): a directory; "auto" = $JAX_COMPILATION_CACHE_DIR when set, else
    # ${XDG_CACHE_HOME:-~/.cache}/grpo_jax/jax; "" = off. Only your own processes may write there (a
    # cache entry is code that runs).
    compilation_cache: str = "auto"


@dataclasses.dataclass(slots=True)
class SFTSection:
    steps: int = 0  # supervised warm-start steps before GRPO; 0 skips SFT
    batch_size: int = 64
    learning_rate: float = 1e-5  # suits fine-tuning a pretrained model; from-scratch models set more
    warmup_steps: int = 0
    # Early stop: every `eval_every` steps, greedy accuracy on `validation_size` held-out problems
    # (disjoint from the reported eval set); stop once it reaches `stop_accuracy` (0 = run all steps).
    eval_every: int = 0
    stop_accuracy: float = 0.0
    validation_size: int = 128


@dataclasses.dataclass(slots=True)
class MeshSection:
    # Device mesh (data x fsdp). -1 on one axis takes all remaining devices.
    data: int = -1
    fsdp: int = 1


@dataclasses.dataclass(slots=True)
class Config:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    task: TaskSection = dataclasses.field(default_factory=TaskSection)
    rewards: RewardSection = dataclasses.field(default_factory=RewardSection)
    grpo: GRPOSection = dataclasses.field(default_factory=GRPOSection)
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    sft: SFTSection = dataclasses.field(default_factory=SFTSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)


# --------------------------------------------------------------------------------------------
# Types, overrides, (de)serialisation.


def _field_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) is dict


def _base_type(tp: Any) -> type:
    if _is_optional(tp):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    return dict if _is_mapping(tp) else tp


def _type_name(tp: Any) -> str:
    if _is_mapping(tp):
        return "a mapping of names to numbers"
    return f"{_base_type(tp).__name__} or None" if _is_optional(tp) else _base_type(tp).__name__


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Checks `value` against the field type; ints are accepted where floats are expected."""
    if value is None and _is_optional(tp):
        return None
    if _is_mapping(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key `{key}` must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
        out = {}
        for name, item in value.items():
            if not isinstance(name, str) or isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigError(f"config key `{key}.{name}` must be a number, got {item!r}")
            out[name] = float(item)
        return out
    base = _base_type(tp)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, bool):  # bool is an int subclass: never accept it
        raise ConfigError(f"config key `{key}` must be an int, got bool {value!r}")
    if not isinstance(value, base):
        raise ConfigError(
            f"config key `{key}` must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _parse(key: str, text: str, tp: Any) -> Any:
    """Parses a command-line string into the field's type."""
    base = _base_type(tp)
    if _is_optional(tp) and text.lower() in ("none", "null"):
        return None
    if _is_mapping(tp):
        try:
            return _coerce(key, json.loads(text), tp)
        except json.JSONDecodeError:
            raise ConfigError(f"config key `{key}` must be a JSON object such as "
                              f"'{{\"correctness\": 1.0}}', cannot parse {text!r}") from None
    try:
        if base is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(
            f"config key `{key}` must be {_type_name(tp)}, cannot parse {text!r}") from None


def _section(config: Config, key: str, name: str) -> Any:
    sections = [f.name for f in dataclasses.fields(config)]
    if name not in sections:
        raise ConfigError(f"unknown config key `{key}`: no section `{name}` (sections: {', '.join(sections)})")
    return getattr(config, name)


def _field(section: Any, key: str, name: str) -> Any:
    hints = _field_types(section)
    if name not in hints:
        raise ConfigError(f"unknown config key `{key}` (valid keys here: {', '.join(hints)})")
    return hints[name]


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """Applies `a.b=v` strings (the `--config.` prefix already stripped) to a copy of `config`."""
    config = from_dict(to_dict(config))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        parts = key.split(".", 2)
        if len(parts) < 2:
            raise ConfigError(f"unknown config key `{key}`: keys look like section.key (e.g. grpo.beta)")
        section = _section(config, key, parts[0])
        tp = _field(section, ".".join(parts[:2]), parts[1])
        if len(parts) == 3:  # section.mapping.name=value: one entry of a mapping field
            if not _is_mapping(tp):
                raise ConfigError(f"unknown config key `{key}`: `{parts[0]}.{parts[1]}` is not a mapping")
            value = _parse(key, text, float)
            getattr(section, parts[1])[parts[2]] = value
            _coerce(".".join(parts[:2]), getattr(section, parts[1]), tp)
        else:
            setattr(section, parts[1], _parse(key, text, tp))
    return config


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> Config:
    """Builds a Config from nested dicts (e.g. a workdir's config.json); missing keys take defaults."""
    config = Config()
    for name, values in data.items():
        section = _section(config, name, name)
        if not isinstance(values, dict):
            raise ConfigError(f"config section `{name}` must be a mapping, got {type(values).__name__}")
        for field, value in values.items():
            key = f"{name}.{field}"
            setattr(section, field, _coerce(key, value, _field(section, key, field)))
    return config


def config_hash(config: Config) -> str:
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> Config:
    """Imports an experiment module, calls its `get_config()`, applies overrides, validates."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such experiment file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"grpo_jax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"experiment file {str(path)!r} has no get_config()")
    config = module.get_config()
    if not isinstance(config, Config):
        raise ConfigError(f"{path}: get_config() must return grpo_jax.config.Config, got {type(config).__name__}")
    config = apply_overrides(config, overrides)
    validate(config)
    return config


# --------------------------------------------------------------------------------------------
# Validation: types everywhere, then values.


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key `{key}` = {value!r} is invalid: must be {allowed}")


def _is_import_path(name: str) -> bool:
    """"package.module:function" (checked for shape here; imported when the run is built)."""
    module, _, function = name.partition(":")
    return bool(module) and function.isidentifier() and all(p.isidentifier() for p in module.split("."))


def mesh_shape(config: Config, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) with -1 resolved against the device count. A mesh may use fewer devices than
    there are (the first data * fsdp of them), never more."""
    data, fsdp = config.mesh.data, config.mesh.fsdp
    if data == -1 and fsdp == -1:
        raise ConfigError("config keys `mesh.data` and `mesh.fsdp` cannot both be -1")
    if data == -1:
        data = num_devices // fsdp if fsdp > 0 else 0
    if fsdp == -1:
        fsdp = num_devices // data if data > 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp > num_devices:
        raise ConfigError(
            f"config keys `mesh.data` x `mesh.fsdp` = {config.mesh.data} x {config.mesh.fsdp} need "
            f"between 1 and the number of devices ({num_devices})")
    return data, fsdp


def sampler_rows(config: Config) -> int:
    """Rows of each sampler call of a GRPO step (the whole batch; `sampling.batch_size` chunks it):
    B * G, or with DAPO dynamic sampling ceil(B * factor) * G per round (rollout.collect)."""
    b, g = config.train.prompts_per_step, config.grpo
    prompts = math.ceil(b * g.dynamic_sampling_factor) if g.dynamic_sampling else b
    return prompts * g.group_size


def sampler_chunk_rows(config: Config) -> int:
    """Rows of one sampler program: sampling.batch_size, or 0 = every row of a call at once."""
    return config.sampling.batch_size or sampler_rows(config)


def continuous_cache_need(config: Config, *, devices: int = 1) -> tuple[int, str]:
    """(tokens, why): the smallest KV pool per device that the continuous engine runs every sampler
    call of this config with (`continuous.min_cache_tokens`: the scratch block, each prompt's blocks,
    one full completion), over the training call (`sampler_chunk_rows` rows, G per prompt) and the
    eval call (train.eval_batch_size rows, one prompt each), their rows split over `devices`."""
    s, g = config.sampling, config.grpo.group_size
    calls = []
    for name, rows, group in (("a training call", sampler_chunk_rows(config), g),
                              ("an eval call", config.train.eval_batch_size, 1)):
        local = max(rows // devices, 1)
        prompts = local // group if local % group == 0 else local  # a group split over devices: each row
        need = continuous.min_cache_tokens(prompts, s.max_prompt_length, s.max_new_tokens, s.block_size)
        calls.append((need, f"{name} holds {prompts} prompt(s) of up to sampling.max_prompt_length = "
                            f"{s.max_prompt_length} tokens per device, in blocks of {s.block_size}, beside a scratch "
                            f"block and one full completion of sampling.max_new_tokens = {s.max_new_tokens}"))
    return max(calls)


def validate(config: Config, *, num_devices: int | None = None, platform: str | None = None) -> Config:
    """Raises ConfigError naming the first bad key. With `num_devices`, checks the mesh too; with
    `platform` (the backend the run compiles for: jax.default_backend(), or a plan's target), that
    model.attention's kernel runs there."""
    for section in dataclasses.fields(config):
        sec = getattr(config, section.name)
        for name, tp in _field_types(sec).items():
            key = f"{section.name}.{name}"
            setattr(sec, name, _coerce(key, getattr(sec, name), tp))
    m, t, r, g, s, o, tr, sft = (config.model, config.task, config.rewards, config.grpo,
                                 config.sampling, config.optim, config.train, config.sft)
    _check(m.dtype in DTYPES, "model.dtype", m.dtype, f"one of {DTYPES}")
    _check(m.param_dtype in DTYPES, "model.param_dtype", m.param_dtype, f"one of {DTYPES}")
    _check(m.param_dtype == "float32" or m.allow_bf16_params or (tr.steps == 0 and sft.steps == 0),
           "model.param_dtype", m.param_dtype,
           "float32 for training: Adam's updates at lr 1e-6 on bf16 weights of scale 0.02 round away for "
           "~98 % of them, so the run would silently learn almost nothing (model.dtype=bfloat16 gives bf16 "
           "compute over f32 master weights; set model.allow_bf16_params=true to train bf16 weights anyway)")
    _check(m.remat in REMAT_POLICIES, "model.remat", m.remat, f"one of {tuple(REMAT_POLICIES)}")
    _check(m.attention in ATTENTION_CHOICES, "model.attention", m.attention, f"one of {ATTENTION_CHOICES}")
    _check(m.attention != "cudnn" or m.dtype == "bfloat16", "model.attention", m.attention,
           "cudnn only with model.dtype=bfloat16 (cuDNN flash attention takes no float32)")
    if platform is not None and m.attention in ATTENTION_BACKENDS:
        _check(platform in ATTENTION_BACKENDS[m.attention], "model.attention", m.attention,
               f"a kernel of this run's backend: {m.attention} runs on {'/'.join(ATTENTION_BACKENDS[m.attention])} "
               f"only, and this run compiles for {platform} (use auto, xla, or splash_interpret to check "
               f"the splash kernel on CPU)")
    _check(m.lora_rank >= 0, "model.lora_rank", m.lora_rank, ">= 0 (0 = full fine-tuning)")
    _check(m.lora_alpha > 0, "model.lora_alpha", m.lora_alpha, "> 0")
    targets = [x.strip() for x in m.lora_targets.split(",") if x.strip()]
    _check(bool(targets) and set(targets) <= set(LORA_TARGETS), "model.lora_targets", m.lora_targets,
           f"a comma-separated subset of {tuple(LORA_TARGETS)}")
    _check(m.lora_rank == 0 or config.sft.steps == 0, "sft.steps", config.sft.steps,
           "0 with model.lora_rank > 0 (the SFT warm start trains every weight; LoRA SFT is not "
           "implemented yet)")
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "intermediate_size", "max_position_embeddings"):
        _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), ">= 1")
    _check(m.vocab_size >= 0, "model.vocab_size", m.vocab_size, ">= 0 (0 = the tokenizer's size)")
    _check(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", m.num_kv_heads,
           f"a divisor of model.num_heads ({m.num_heads})")
    _check(t.name in BUILTIN_TASKS or _is_import_path(t.name), "task.name", t.name,
           f"one of {tuple(BUILTIN_TASKS)} or an import path 'package.module:function'")
    _check(t.source in SOURCES, "task.source", t.source, f"one of {SOURCES}")
    _check(t.answer_format in ANSWER_FORMATS, "task.answer_format", t.answer_format, f"one of {ANSWER_FORMATS}")
    _check(t.prompt_style in PROMPT_STYLES, "task.prompt_style", t.prompt_style, f"one of {PROMPT_STYLES}")
    _check(t.name not in ("gsm8k", "math500", "svamp", "records") or bool(t.data_path), "task.data_path",
           t.data_path, f"the dataset's file or directory for task {t.name!r}")
    _check(t.name != "math500" or bool(t.train_data_path), "task.train_data_path", t.train_data_path,
           "the MATH release's file or directory (test.jsonl) for task 'math500': MATH-500 is the "
           "eval set, training uses the MATH problems not in it")
    _check(t.num_digits >= 1, "task.num_digits", t.num_digits, ">= 1")
    _check(t.working in WORKINGS, "task.working", t.working, f"one of {WORKINGS}")
    _check(t.eval_size >= 0, "task.eval_size", t.eval_size, ">= 0")
    for name, weight in r.weights.items():
        _check(name in BUILTIN_REWARDS or _is_import_path(name), f"rewards.weights.{name}", weight,
               f"a weight for one of {BUILTIN_REWARDS} or an import path 'package.module:function'")
        _check(weight >= 0, f"rewards.weights.{name}", weight, ">= 0")
    check_reward_metric_names([n for n, w in r.weights.items() if w > 0])  # one metric key per reward
    _check(any(w > 0 for n, w in r.weights.items() if n != "overlong"), "rewards.weights", r.weights,
           "a positive weight on at least one verifier: with none every reward is 0 (or a function of "
           "length alone) and GRPO learns nothing")
    overlong = r.weights.get("overlong", 0.0)
    _check(overlong == 0 or 0 <= r.overlong_cache <= s.max_new_tokens, "rewards.overlong_cache",
           r.overlong_cache, f"in [0, sampling.max_new_tokens = {s.max_new_tokens}] when rewards.overlong > 0 "
           f"(the soft-punishment window lies inside the generation limit)")
    _check(r.timeout_seconds > 0, "rewards.timeout_seconds", r.timeout_seconds, "> 0")
    _check(g.group_size >= 2, "grpo.group_size", g.group_size,
           ">= 2 (group-relative advantages need at least two completions per prompt)")
    _check(g.epsilon > 0, "grpo.epsilon", g.epsilon, "> 0")
    _check(g.epsilon_high is None or g.epsilon_high > 0, "grpo.epsilon_high", g.epsilon_high,
           "> 0 or None (None = grpo.epsilon)")
    _check(g.beta >= 0, "grpo.beta", g.beta, ">= 0")
    _check(g.loss_type in LOSS_TYPES, "grpo.loss_type", g.loss_type, f"one of {LOSS_TYPES}")
    _check(g.scale_rewards in SCALE_REWARDS, "grpo.scale_rewards", g.scale_rewards, f"one of {SCALE_REWARDS}")
    _check(g.importance_level in IMPORTANCE_LEVELS, "grpo.importance_level", g.importance_level,
           f"one of {IMPORTANCE_LEVELS}")
    _check(g.num_iterations >= 1, "grpo.num_iterations", g.num_iterations, ">= 1")
    _check(g.advantage_eps > 0, "grpo.advantage_eps", g.advantage_eps, "> 0")
    eps_high = g.epsilon if g.epsilon_high is None else g.epsilon_high
    _check(g.delta is None or g.delta > 1 + eps_high, "grpo.delta", g.delta,
           f"None or > 1 + grpo.epsilon_high = {1 + eps_high} (INTELLECT-2's cap on the unclipped ratio; at "
           f"or below the clip's upper end it would clip every ratio above it, both signs)")
    _check(g.delta is None or g.loss_type in CLIPPED_LOSS_TYPES, "grpo.delta", g.delta,
           f"None with grpo.loss_type={g.loss_type!r}: delta caps the clipped surrogate of {CLIPPED_LOSS_TYPES}")
    _check(g.cispo_max_weight > 0, "grpo.cispo_max_weight", g.cispo_max_weight, "> 0")
    for key in ("sapo_temperature_pos", "sapo_temperature_neg", "vespo_lambda_pos", "vespo_lambda_neg"):
        _check(getattr(g, key) > 0, f"grpo.{key}", getattr(g, key), "> 0")
    for key in ("vespo_k_pos", "vespo_k_neg"):
        _check(getattr(g, key) >= 0, f"grpo.{key}", getattr(g, key), ">= 0")
    _check(g.kl_estimator in KL_ESTIMATORS, "grpo.kl_estimator", g.kl_estimator, f"one of {KL_ESTIMATORS}")
    _check(not g.kl_in_reward or g.beta > 0, "grpo.kl_in_reward", g.kl_in_reward,
           "false with grpo.beta = 0 (the KL penalty in the reward would be 0 x KL: nothing)")
    _check(not g.kl_in_reward or g.multi_objective_aggregation == "sum_then_normalize", "grpo.kl_in_reward",
           g.kl_in_reward, "false with grpo.multi_objective_aggregation=normalize_then_sum (the per-reward "
           "components are normalised on the host; the KL penalty is applied in the update step)")
    _check(g.entropy_coef >= 0, "grpo.entropy_coef", g.entropy_coef, ">= 0")
    _check(0 <= g.entropy_coef_min <= g.entropy_coef_max, "grpo.entropy_coef_min", g.entropy_coef_min,
           f"in [0, grpo.entropy_coef_max = {g.entropy_coef_max}]")
    _check(not g.adaptive_entropy or g.entropy_coef_delta > 0, "grpo.entropy_coef_delta", g.entropy_coef_delta,
           "> 0 with grpo.adaptive_entropy (the coefficient would never move)")
    _check(g.entropy_target >= 0, "grpo.entropy_target", g.entropy_target, ">= 0")
    _check(0 <= g.top_entropy_quantile <= 1, "grpo.top_entropy_quantile", g.top_entropy_quantile,
           "in [0, 1] (1 = every token; 0.2 = the paper's top 20 %)")
    _check(g.advantage_estimator in ADVANTAGE_ESTIMATORS, "grpo.advantage_estimator", g.advantage_estimator,
           f"one of {ADVANTAGE_ESTIMATORS}")
    _check(g.multi_objective_aggregation in REWARD_AGGREGATIONS, "grpo.multi_objective_aggregation",
           g.multi_objective_aggregation, f"one of {REWARD_AGGREGATIONS}")
    _check(g.multi_objective_aggregation == "sum_then_normalize" or g.advantage_estimator == "grpo",
           "grpo.advantage_estimator", g.advantage_estimator,
           "grpo with grpo.multi_objective_aggregation=normalize_then_sum (GDPO makes the advantages itself: "
           "per-reward group normalisation, then a batch normalisation; another estimator would be ignored)")
    _check(g.ref_sync_every >= 0, "grpo.ref_sync_every", g.ref_sync_every, ">= 0 (0 = off)")
    _check(0 < g.ref_sync_alpha <= 1, "grpo.ref_sync_alpha", g.ref_sync_alpha, "in (0, 1]")
    _check(g.ref_sync_every == 0 or g.beta > 0, "grpo.ref_sync_every", g.ref_sync_every,
           "0 with grpo.beta = 0 (there is no reference to refresh)")
    _check(g.ref_sync_every == 0 or m.lora_rank == 0, "grpo.ref_sync_every", g.ref_sync_every,
           "0 with model.lora_rank > 0 (the reference is the base model with the adapters off: there is "
           "no separate copy to refresh)")
    _check(g.dynamic_sampling_factor >= 1, "grpo.dynamic_sampling_factor", g.dynamic_sampling_factor, ">= 1")
    _check(g.dynamic_sampling_max_rounds >= 1, "grpo.dynamic_sampling_max_rounds",
           g.dynamic_sampling_max_rounds, ">= 1")
    weighted = [n for n, w in r.weights.items() if w > 0]
    _check(not g.dynamic_sampling or g.dynamic_sampling_metric in ["reward", *weighted],
           "grpo.dynamic_sampling_metric", g.dynamic_sampling_metric,
           f"'reward' or the name of a reward with a positive weight in rewards.weights ({', '.join(weighted)})")
    _check(s.temperature > 0 or tr.steps == 0, "sampling.temperature", s.temperature,
           "> 0 for GRPO: at 0 (greedy) every completion of a group is the same, every advantage is 0 "
           "and nothing is learnt (evaluation is greedy whatever this is)")
    _check(s.top_k >= 0, "sampling.top_k", s.top_k, ">= 0 (0 = off)")
    _check(0 < s.top_p <= 1, "sampling.top_p", s.top_p, "in (0, 1]")
    _check(0 <= s.min_p < 1, "sampling.min_p", s.min_p, "in [0, 1) (0 = off)")
    _check(s.max_new_tokens >= 1, "sampling.max_new_tokens", s.max_new_tokens, ">= 1")
    _check(s.max_prompt_length >= 1, "sampling.max_prompt_length", s.max_prompt_length, ">= 1")
    _check(s.weight_layout in WEIGHT_LAYOUTS, "sampling.weight_layout", s.weight_layout,
           f"one of {WEIGHT_LAYOUTS}")
    _check(s.batch_size >= 0, "sampling.batch_size", s.batch_size, ">= 0 (0 = all rows in one sampler call)")
    _check(s.batch_size % g.group_size == 0, "sampling.batch_size", s.batch_size,
           f"whole groups: a multiple of grpo.group_size = {g.group_size} (each prompt is prefilled once "
           f"for its G rows)")
    _check(s.batch_size == 0 or sampler_rows(config) % s.batch_size == 0, "sampling.batch_size", s.batch_size,
           f"a divisor of the {sampler_rows(config)} rows of each sampler call "
           + ("(ceil(train.prompts_per_step * grpo.dynamic_sampling_factor) * grpo.group_size: one "
              "dynamic-sampling round)" if g.dynamic_sampling else "(train.prompts_per_step * grpo.group_size)")
           + ": one compiled sampler for every chunk")
    _check(s.engine in ENGINES, "sampling.engine", s.engine, f"one of {ENGINES}")
    _check(s.slots >= 0, "sampling.slots", s.slots, ">= 0 (0 = one decode slot per row)")
    _check(s.block_size >= 1, "sampling.block_size", s.block_size, ">= 1")
    _check(s.cache_tokens >= 0, "sampling.cache_tokens", s.cache_tokens, ">= 0 (0 = no row is ever preempted)")
    if s.engine == "continuous":
        _check(s.max_new_tokens % s.block_size == 0, "sampling.block_size", s.block_size,
               f"a divisor of sampling.max_new_tokens = {s.max_new_tokens} with sampling.engine=continuous "
               f"(a row's completion is a whole number of blocks)")
        need, call = continuous_cache_need(config)
        _check(s.cache_tokens == 0 or s.cache_tokens >= need, "sampling.cache_tokens", s.cache_tokens,
               f"0 or >= {need} with sampling.engine=continuous: {call}")
    _check(o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "> 0")
    _check(o.schedule in SCHEDULES, "optim.schedule", o.schedule, f"one of {SCHEDULES}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, ">= 0")
    _check(o.schedule_steps >= 0, "optim.schedule_steps", o.schedule_steps, ">= 0 (0 = train.steps)")
    _check(o.schedule != "cosine" or tr.steps <= (o.schedule_steps or tr.steps), "train.steps", tr.steps,
           f"<= optim.schedule_steps = {o.schedule_steps} with optim.schedule=cosine: the steps past the "
           f"schedule's end would train at learning rate 0 (a run resumed with more train.steps keeps its "
           f"first launch's horizon; use a new workdir for a longer schedule)")
    _check(0 <= o.b1 < 1, "optim.b1", o.b1, "in [0, 1)")
    _check(0 <= o.b2 < 1, "optim.b2", o.b2, "in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
    _check(o.max_grad_norm >= 0, "optim.max_grad_norm", o.max_grad_norm, ">= 0 (0 = no clipping)")
    _check(tr.steps >= 0, "train.steps", tr.steps, ">= 0")
    _check(tr.prompts_per_step >= 1, "train.prompts_per_step", tr.prompts_per_step, ">= 1")
    _check(tr.num_minibatches >= 1, "train.num_minibatches", tr.num_minibatches, ">= 1")
    _check(tr.steps_per_generation >= 1, "train.steps_per_generation", tr.steps_per_generation, ">= 1")
    rows = tr.prompts_per_step * g.group_size
    _check(rows % tr.steps_per_generation == 0, "train.steps_per_generation", tr.steps_per_generation,
           f"a divisor of train.prompts_per_step * grpo.group_size = {rows}")
    part = rows // tr.steps_per_generation
    _check(part % tr.num_minibatches == 0, "train.num_minibatches", tr.num_minibatches,
           f"a divisor of the rows of each optimizer step, train.prompts_per_step * grpo.group_size / "
           f"train.steps_per_generation = {part}")
    for key in ("log_every", "max_checkpoints", "eval_batch_size"):
        _check(getattr(tr, key) >= 1, f"train.{key}", getattr(tr, key), ">= 1")
    for key in ("eval_every", "checkpoint_every", "samples_every", "pass_k"):
        _check(getattr(tr, key) >= 0, f"train.{key}", getattr(tr, key), ">= 0 (0 = off)")
    problem = loggers_problem(parse_loggers(tr.loggers))  # wandb asked for: is it installed? (not imported)
    if problem:
        raise ConfigError(f"config key `train.loggers` = {tr.loggers!r} is invalid: {problem}")
    _check(sft.steps >= 0, "sft.steps", sft.steps, ">= 0")
    _check(sft.batch_size >= 1, "sft.batch_size", sft.batch_size, ">= 1")
    _check(sft.learning_rate > 0, "sft.learning_rate", sft.learning_rate, "> 0")
    _check(sft.eval_every >= 0, "sft.eval_every", sft.eval_every, ">= 0 (0 = off)")
    _check(0 <= sft.stop_accuracy <= 1, "sft.stop_accuracy", sft.stop_accuracy, "in [0, 1] (0 = off)")
    _check(sft.stop_accuracy == 0 or sft.eval_every > 0, "sft.eval_every", sft.eval_every,
           "> 0 when sft.stop_accuracy is set (how often to check it)")
    _check(sft.validation_size >= 1, "sft.validation_size", sft.validation_size, ">= 1")
    for key in ("data", "fsdp"):
        value = getattr(config.mesh, key)
        _check(value == -1 or value >= 1, f"mesh.{key}", value, ">= 1, or -1 for all remaining devices")
    if num_devices is not None:
        data, fsdp = mesh_shape(config, num_devices)
        shards = data * fsdp
        chunks = tr.steps_per_generation * tr.num_minibatches
        _check(rows // chunks % shards == 0, "train.prompts_per_step", tr.prompts_per_step,
               f"such that prompts_per_step * grpo.group_size / (train.steps_per_generation * "
               f"train.num_minibatches) ({rows} / {chunks}) is divisible by the mesh's {shards} "
               f"devices (mesh.data={data} x mesh.fsdp={fsdp})")
        if g.dynamic_sampling:  # each round samples ceil(B * factor) prompts x G rows, sharded too
            per_round = -(-tr.prompts_per_step * g.dynamic_sampling_factor // 1)
            _check(int(per_round) * g.group_size % shards == 0, "grpo.dynamic_sampling_factor",
                   g.dynamic_sampling_factor,
                   f"such that ceil(train.prompts_per_step * factor) * grpo.group_size = "
                   f"{int(per_round)} * {g.group_size} is divisible by the mesh's {shards} devices")
        _check(s.batch_size % shards == 0, "sampling.batch_size", s.batch_size,
               f"divisible by the mesh's {shards} devices (each chunk's rows are split over them)")
        _check(sft.batch_size % shards == 0, "sft.batch_size", sft.batch_size,
               f"divisible by the mesh's {shards} devices")
        _check(tr.eval_batch_size % shards == 0, "train.eval_batch_size", tr.eval_batch_size,
               f"divisible by the mesh's {shards} devices")
        if s.engine == "continuous" and shards > 1:  # each device runs the engine on its own rows
            _check(s.weight_layout == "replicated", "sampling.weight_layout", s.weight_layout,
                   f"replicated with sampling.engine=continuous on the mesh's {shards} devices (each runs the "
                   f"engine on its own rows with a whole copy of the weights; tensor: sampling.engine=lockstep)")
            _check(s.slots % shards == 0, "sampling.slots", s.slots,
                   f"a multiple of the mesh's {shards} devices with sampling.engine=continuous (each device "
                   f"decodes sampling.slots / {shards} slots over its own rows)")
            need, call = continuous_cache_need(config, devices=shards)
            _check(s.cache_tokens == 0 or (s.cache_tokens % shards == 0 and s.cache_tokens // shards >= need),
                   "sampling.cache_tokens", s.cache_tokens,
                   f"0 or a multiple of the mesh's {shards} devices of at least {shards} x {need} with "
                   f"sampling.engine=continuous (each device's pool holds sampling.cache_tokens / {shards} "
                   f"tokens): {call}")
    return config


# Allowed values of the keys that take one of a fixed set (for --help; validate checks the same sets).
CHOICES = {
    "model.dtype": DTYPES, "model.param_dtype": DTYPES, "model.remat": tuple(REMAT_POLICIES),
    "model.attention": ATTENTION_CHOICES,
    "task.name": tuple(BUILTIN_TASKS) + ("package.module:function",),
    "task.source": SOURCES, "task.prompt_style": PROMPT_STYLES, "task.working": WORKINGS,
    "task.answer_format": ANSWER_FORMATS,
    "rewards.weights": BUILTIN_REWARDS + ("package.module:function",),
    "grpo.loss_type": LOSS_TYPES, "grpo.scale_rewards": SCALE_REWARDS,
    "grpo.importance_level": IMPORTANCE_LEVELS, "grpo.kl_estimator": KL_ESTIMATORS,
    "grpo.advantage_estimator": ADVANTAGE_ESTIMATORS, "grpo.multi_objective_aggregation": REWARD_AGGREGATIONS,
    "optim.schedule": SCHEDULES,
    "sampling.weight_layout": WEIGHT_LAYOUTS, "sampling.engine": ENGINES, "train.loggers": LOGGERS,
}


def _field_docs(section_type: type) -> dict[str, str]:
    """Each field's comment in this file (the lines above it and the one beside it), for --help."""
    import inspect
    docs, pending = {}, []
    for line in inspect.getsource(section_type).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("# "))
        elif ":" in text and not text.startswith(("def ", "@", '"""')):
            name = text.split(":", 1)[0].strip()
            beside = text.split("  # ", 1)[1] if "  # " in text else ""
            docs[name] = " ".join(pending + [beside]).strip()
            pending = []
        else:
            pending = []
    return docs


def help_text(config: Config | None = None) -> str:
    """Every config key with its type, default (or `config`'s value) and allowed values."""
    config = Config() if config is None else config
    lines = ["Config keys (override any with --config.section.key=value; a mapping's entries with",
             "--config.section.key.name=value):", ""]
    for section in dataclasses.fields(config):
        sec = getattr(config, section.name)
        lines.append(f"[{section.name}]")
        docs = _field_docs(type(sec))
        for name, tp in _field_types(sec).items():
            key = f"{section.name}.{name}"
            value = getattr(sec, name)
            allowed = f"  one of: {', '.join(map(str, CHOICES[key]))}" if key in CHOICES else ""
            lines.append(f"  {key} = {json.dumps(value)}  ({_type_name(tp)}){allowed}")
            if docs.get(name):
                lines.append(f"      {docs[name]}")
        lines.append("")
    return "\n".join(lines)


USAGE = ("usage: python -m grpo_jax.train --config experiments/NAME.py --workdir runs/NAME "
         "[--config.section.key=value ...] [--help]")


def override_item(arg: str, rest: list) -> str:
    """One `--config.section.key=value` (or `--config.section.key value`, taking the value from the
    front of `rest`) of a command line -> "section.key=value"."""
    item = arg[len("--config."):]
    if "=" not in item:
        if not rest:
            raise ConfigError(f"{arg} needs a value")
        item = f"{item}={rest.pop(0)}"
    return item


def parse_command_line(argv: Sequence[str]) -> tuple[Config, str]:
    """`--config PATH --workdir DIR [--config.a.b=v ...]` -> (validated Config, workdir)."""
    path = workdir = None
    overrides = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--config."):
            overrides.append(override_item(arg, args))
        elif arg in ("--config", "--workdir"):
            if not args:
                raise ConfigError(f"{arg} needs a value")
            value = args.pop(0)
            path, workdir = (value, workdir) if arg == "--config" else (path, value)
        elif arg.startswith("--config=") or arg.startswith("--workdir="):
            flag, value = arg.split("=", 1)
            path, workdir = (value, workdir) if flag == "--config" else (path, value)
        else:
            raise ConfigError(f"unknown argument {arg!r}: expected --config PATH --workdir DIR "
                              f"[--config.section.key=value ...]")
    if path is None or workdir is None:
        raise ConfigError(USAGE)
    return load_config(path, overrides), workdir
