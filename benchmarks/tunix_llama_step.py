"""The shared Tunix harness on a Llama-architecture HF directory (SmolLM2-135M-Instruct); runs in the Tunix venv.

    $TUNIX_VENV/bin/python benchmarks/tunix_llama_step.py --model benchmarks/_models/smollm2_135m_instruct \
        [--harness ../shared/bench/tunix/tunix_grpo_bench.py] [--full-budget] [--train-micro-batch-size M] \
        --steps 4 --warmup-steps 1 ...

../shared/bench/tunix/tunix_grpo_bench.py (google-tunix 0.1.7's own GRPOLearner, RLCluster, vanilla
rollout and train step, with the timers of benchmarks/README.md) is written for Tunix's Qwen2 and a
tokenizer without bos. This runs that file's own source with the edits below, each checked to apply
exactly once, so a changed harness stops here instead of measuring something else. Every other line
(workload, rewards, optimizer, timers, the RESULT line) is the harness's; its flags pass through.
  1. the checkpoint is `model_type` "llama" (SmolLM2 is a Llama), not "qwen2";
  2. Tunix's Llama3 model and safetensors loader (tunix.models.llama3) replace its Qwen2 ones, with
     the Llama3 ModelConfig's field name for tied embeddings (it has no dtype fields: the weights are
     loaded in f32 and the compute follows them);
  3. the tokenizer may have a bos (SmolLM2: <|im_start|>, id 1) and pad = eos (<|im_end|>, id 2);
     Tunix's sampler prepends the bos to every prompt, so the static prompt width counts it;
  4. --full-budget: RolloutConfig.eos_tokens = [-1], so every row decodes the whole budget, as TRL's
     min_new_tokens and grpo_step's eos_id=-1 make the other sides do (a real model stops early);
  5. --train-micro-batch-size M (prompts): the policy update runs over micro-batches of M prompts x G
     rows with gradient accumulation (Tunix's RLTrainingConfig: mini_batch_size = the batch, so still
     one optimizer update per step, through optax.MultiSteps), while generation and the reference
     forward stay one call over the whole batch. The same FLOPs in a smaller peak: at 8 x 8 x 64 tokens
     on SmolLM2 the harness as is (one micro-batch) grew past 17.5 GB RSS. Tunix then calls
     update_actor once per micro-batch; the harness's update timer adds them up per step.
Known difference (Tunix 0.1.7): its Llama3 attention calls apply_rope without the config's rope_theta,
so it rotates with the default 1e6 instead of SmolLM2's 1e5: the same cost, slightly different numbers.
"""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

EDITS = [  # (old, new): each `old` must occur exactly once in the harness
    ('assert hf_cfg["model_type"] == "qwen2" and not hf_cfg.get("use_sliding_window"), hf_cfg',
     'assert hf_cfg["model_type"] == "llama", hf_cfg'),
    ("from tunix.models.qwen2 import model as qwen2_model", "from tunix.models.llama3 import model as qwen2_model"),
    ("from tunix.models.qwen2 import params as qwen2_params",
     "from tunix.models.llama3 import params as qwen2_params"),
    ('        use_tied_embedding=hf_cfg["tie_word_embeddings"],\n        dtype=jnp.float32,\n'
     '        param_dtype=jnp.float32,\n',
     '        weight_tying=hf_cfg["tie_word_embeddings"],\n'),
    ("assert tokenizer.bos_token_id is None and tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1",
     "assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None"),
    ('prompt_lens = [len(tokenizer.encode(r["prompt"])) for r in rows]',
     'prompt_lens = [len(tokenizer.encode(r["prompt"])) + bool(tokenizer.bos_token_id) for r in rows]'),
]
MICRO_BATCH = (  # (old, new with {m} for the micro-batch size in prompts)
    ("        mini_batch_size=None,  # = full batch (args.prompts prompts): one optimizer update per generation batch\n"
     "        train_micro_batch_size=None,  # = mini batch: no gradient accumulation, no optax.MultiSteps wrapper\n"
     "        rollout_micro_batch_size=None,  # = whole batch: one generate call for all prompts x G\n"
     "        compute_logps_micro_batch_size=None,  # = whole batch: one reference forward\n"),
    "        mini_batch_size=args.prompts,  # one optimizer update per generation batch\n"
    "        train_micro_batch_size={m},  # gradient accumulation over the batch's micro-batches\n"
    "        rollout_micro_batch_size=args.prompts,  # one generate call for all prompts x G\n"
    "        compute_logps_micro_batch_size=args.prompts,  # one reference forward\n")
UPDATE_PER_STEP = (  # with micro-batches: one update time per step, the sum over its micro-batches
    '        T["update"].append(time.perf_counter() - t0)\n',
    '        dt = time.perf_counter() - t0\n'
    '        if len(T["update"]) < len(T["gen"]):  # the step\'s first micro-batch\n'
    '            T["update"].append(dt)\n'
    '        else:\n'
    '            T["update"][-1] += dt\n')
FULL_BUDGET = ("        data_type=jnp.float32,\n    )\n",
               "        data_type=jnp.float32,\n        eos_tokens=[-1],\n    )\n")


def default_harness() -> pathlib.Path:
    base = os.environ.get("GRPO_JAX_SHARED")
    return (pathlib.Path(base) if base else ROOT.parent / "shared") / "bench" / "tunix" / "tunix_grpo_bench.py"


def patched_source(harness: pathlib.Path, full_budget: bool, micro_batch: int | None = None) -> str:
    src = harness.read_text()
    extra = ([FULL_BUDGET] if full_budget else []) + (
        [(MICRO_BATCH[0], MICRO_BATCH[1].format(m=micro_batch)), UPDATE_PER_STEP] if micro_batch else [])
    for old, new in EDITS + extra:
        count = src.count(old)
        if count != 1:
            raise SystemExit(f"{harness}: expected exactly one occurrence of {old!r}, found {count}")
        src = src.replace(old, new)
    return src


def main():
    argv = sys.argv[1:]
    harness, full_budget = default_harness(), False
    if "--harness" in argv:
        i = argv.index("--harness")
        harness = pathlib.Path(argv[i + 1])
        del argv[i:i + 2]
    if "--full-budget" in argv:
        argv.remove("--full-budget")
        full_budget = True
    micro_batch = None
    if "--train-micro-batch-size" in argv:
        i = argv.index("--train-micro-batch-size")
        micro_batch = int(argv[i + 1])
        del argv[i:i + 2]
    source = patched_source(harness, full_budget, micro_batch)
    sys.argv = [str(harness), *argv]
    namespace = {"__name__": "__main__", "__file__": str(harness)}
    exec(compile(source, str(harness), "exec"), namespace)  # the harness's main() runs under its own name


if __name__ == "__main__":
    main()
