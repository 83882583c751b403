"""Greedy completions of the base model and of a run's latest checkpoint on the same held-out problems.

    python docs/compare_completions.py experiments/smollm2_addition.py runs/smollm2_addition [N]

Prints, for the first N (default 6) reported held-out problems in their held-out order (no selection),
one line per model: the problem, the gold answer, the completion, and its correctness and format
scores in the task's answer style. The README's before/after table for SmolLM2 comes from this.
"""
import sys
import tempfile

import jax

from grpo_jax import build, evaluate, rewards
from grpo_jax import config as cfg_lib


def main(argv):
    experiment, workdir = argv[0], argv[1]
    n = int(argv[2]) if len(argv) > 2 else 6
    c = cfg_lib.load_config(experiment)
    for label, s in [("base", build.setup(c, tempfile.mkdtemp())), ("trained", build.setup(c, workdir, for_eval=True))]:
        examples = s.task.eval_examples[:n]
        outs = evaluate.generate(s.model_config, s.params, s.tokenizer, [s.task.prompt(e) for e in examples],
                                 key=jax.random.key(0), batch_size=n, max_prompt_length=c.sampling.max_prompt_length,
                                 max_new_tokens=c.sampling.max_new_tokens, temperature=0.0, put=s.put,
                                 chat=c.task.chat_template, system=c.task.system_prompt, eos_ids=s.eos_ids,
                                 length_buckets=c.train.length_buckets, **evaluate.engine_options(c))
        fmt = s.task.format or (lambda o: rewards.format_reward(o, style=s.task.style))  # code: one fenced block
        for e, o in zip(examples, outs):
            print(f"{label} (step {s.step}) | {e.prompt} (gold {e.answer}) | {o!r} | correct "
                  f"{s.task.correct(o, e):.0f} format {fmt(o):.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
