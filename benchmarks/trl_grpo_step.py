"""TRL's GRPOTrainer on the grpo_step workload (runs in benchmarks/_venv_trl; imports no grpo_jax).

    benchmarks/_venv_trl/bin/python benchmarks/trl_grpo_step.py --model-dir DIR --prompts 8 \
        --group-size 8 --max-new-tokens 64 --beta 0.04 --steps 10

Same workload as benchmarks/grpo_step.py: plain-text prompts from the same generator, G completions
per prompt, no early EOS (min_new_tokens = max_new_tokens), temperature 1, the same digit-fraction
reward, beta, 1 update per generated batch (steps_per_generation = num_iterations = 1,
gradient_accumulation_steps = 1), loss_type "grpo", fp32, no gradient checkpointing, CPU.
--grad-accum K: the policy step over K micro-batches of B*G/K rows (gradient_accumulation_steps =
steps_per_generation = K: still one generation of all B*G rows and one optimizer update per step, the
same FLOPs in a smaller peak; for a real model on a machine short of memory).
Per step: `step` (on_step_begin -> on_step_end), `generate` (TRL's `_generate`: transformers
generate), `score` (the rest of `_generate_and_score_completions`: reward, old/ref log-prob forwards),
`update` = step - generate - score (policy forward + backward + AdamW). First step excluded.
Final line: RESULT sec_per_step_median=... generate_s=... score_s=... update_s=... tokens_per_s=...
peak_rss_mb=...
"""
import argparse
import resource
import statistics
import string
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


PREFIX_SENTENCE = "Solve the problem. Think step by step, then give the final number after 'A:'. "


def prefix_text(chars):  # the same shared instruction as benchmarks/grpo_step.py
    return (PREFIX_SENTENCE * (chars // len(PREFIX_SENTENCE) + 1))[:chars]


def prompt_texts(rng, n, prefix="", style="mixed"):  # the same generator as benchmarks/grpo_step.py
    if style == "addition":
        return [f"{prefix}What is {rng.integers(0, 100)}+{rng.integers(0, 100)}? Answer:" for _ in range(n)]
    return [f"{prefix}Q: {rng.integers(0, 10**rng.integers(1, 6))}+{rng.integers(0, 1000)}=? A:" for _ in range(n)]


def digit_reward(completions, **_):
    return [sum(ch in string.digits for ch in c) / max(len(c), 1) for c in completions]


class Timer(TrainerCallback):
    def __init__(self):
        self.steps, self._t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self._t)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-prefix", type=int, default=0, help="characters of a shared instruction")
    parser.add_argument("--prompt-style", choices=["mixed", "addition"], default="mixed",
                        help="as in benchmarks/grpo_step.py")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="micro-batches per policy step (one generation, one optimizer update per step)")
    args = parser.parse_args()
    b, g, t = args.prompts, args.group_size, args.max_new_tokens

    rng = np.random.default_rng(args.seed)
    dataset = Dataset.from_dict({"prompt": prompt_texts(rng, b * (args.steps + 1), prefix_text(args.prompt_prefix),
                                                          args.prompt_style)})
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=b * g // args.grad_accum, num_generations=g,
            steps_per_generation=args.grad_accum, gradient_accumulation_steps=args.grad_accum, num_iterations=1,
            max_completion_length=t, beta=args.beta,
            temperature=1.0, loss_type="grpo", learning_rate=1e-6, max_steps=args.steps + 1,
            logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
            gradient_checkpointing=False, generation_kwargs={"min_new_tokens": t}, seed=args.seed,
            disable_tqdm=True, dataloader_num_workers=0)
        timer = Timer()
        trainer = GRPOTrainer(model=model, reward_funcs=digit_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer])
        gen, score = [], []
        orig_generate, orig_gs = trainer._generate, trainer._generate_and_score_completions

        def timed_generate(*a, **kw):
            start = time.perf_counter()
            out = orig_generate(*a, **kw)
            gen.append(time.perf_counter() - start)
            return out

        def timed_gs(*a, **kw):
            start = time.perf_counter()
            out = orig_gs(*a, **kw)
            score.append(time.perf_counter() - start - gen[-1])
            assert out["completion_mask"].sum().item() == b * g * t, "completions must be full length"
            return out

        trainer._generate, trainer._generate_and_score_completions = timed_generate, timed_gs
        trainer.train()

    steps = timer.steps[1:]
    for i, (s, ge, sc) in enumerate(zip(timer.steps, gen, score)):
        print(f"step {i}{' (first)' if i == 0 else ''}: step {s:.3f} s = generate {ge:.3f} + score {sc:.3f} "
              f"+ update {s - ge - sc:.3f}")
    med = statistics.median(steps)
    gen_m, score_m = statistics.median(gen[1:]), statistics.median(score[1:])
    upd = statistics.median(s - ge - sc for s, ge, sc in zip(timer.steps[1:], gen[1:], score[1:]))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"RESULT sec_per_step_median={med:.4g} generate_s={gen_m:.4g} score_s={score_m:.4g} "
          f"update_s={upd:.4g} tokens_per_s={b * g * t / med:.4g} peak_rss_mb={rss:.4g}", flush=True)


if __name__ == "__main__":
    main()
