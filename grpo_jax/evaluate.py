"""Evaluation with the training verifiers: greedy pass@1, and pass@k / maj@k from k samples.

    pass@1 (greedy)  fraction of problems whose temperature-0 completion is correct
    pass@k           fraction with at least one correct completion among k samples
    maj@k            fraction where the most frequent extracted answer among k samples is
                     correct (ties broken by first occurrence; unparseable answers never vote)

    python -m grpo_jax.evaluate --config experiments/NAME.py --workdir runs/NAME [--config.a.b=v]

evaluates the workdir's latest checkpoint (or the initial model when there is none) on the task's
held-out split and prints one `RESULT ...` line.
"""

import collections
import sys

import jax
import numpy as np

from grpo_jax import buckets
from grpo_jax import build
from grpo_jax import config as cfg_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax import sampling
from grpo_jax import tokenizer as tok_lib


def _padded_batches(items, batch_size):
    """Fixed-size batches (the last one padded by repeating its first item), so the sampler
    compiles once; yields (batch, number of real items)."""
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        yield chunk, real


def generate(model_config, params, tokenizer, prompts, *, key, batch_size, max_prompt_length,
             max_new_tokens, temperature, put, chat=False, system=None, top_k=0, top_p=1.0, eos_ids=None,
             weight_layout="replicated", length_buckets=False):
    """Completions (text) for a list of prompt strings, in fixed-size sharded batches.

    `eos_ids`: the ids that end a completion (an int or a tuple); None = `eos_token_ids(tokenizer)`.
    `weight_layout`: the sampler's (config key sampling.weight_layout). `length_buckets` (config key
    train.length_buckets): each batch's prompts cut to its longest, rounded up to a bucket of
    `max_prompt_length` (`buckets.trim_prompts`: a few sampler shapes, not one per batch).
    """
    eos_ids = tok_lib.eos_token_ids(tokenizer) if eos_ids is None else eos_ids
    out = []
    for i, (chunk, real) in enumerate(_padded_batches(prompts, batch_size)):
        ptok, pmask = tok_lib.encode_prompts(tokenizer, chunk, max_length=max_prompt_length, chat=chat,
                                             system=system or None)
        if length_buckets:
            ptok, pmask = buckets.trim_prompts(ptok, pmask)
        rollout = sampling.sample(model_config, params, put(ptok), put(pmask), jax.random.fold_in(key, i),
                                  max_new_tokens=max_new_tokens, eos_id=eos_ids,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  weight_layout=weight_layout)
        tokens, mask = to_host((rollout.tokens, rollout.mask))
        out += tok_lib.decode_completions(tokenizer, tokens, mask, eos_id=eos_ids)[:real]
    return out


def to_host(tree):
    """Device arrays -> numpy, also for arrays sharded across processes (multi-host runs)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def majority_correct(completions, gold, *, style, score) -> float:
    answers = [rewards_lib.extract_answer(c, style=style) for c in completions]
    votes = collections.Counter(a.strip() for a in answers if a is not None and a.strip())
    if not votes:
        return 0.0
    best = max(votes.items(), key=lambda kv: kv[1])[0]  # Counter keeps first-seen order on ties
    first = next(c for c, a in zip(completions, answers) if a is not None and a.strip() == best)
    return score(first, gold)


def evaluate(model_config, params, tokenizer, task, *, key, batch_size, max_prompt_length,
             max_new_tokens, put, pass_k=0, temperature=1.0, top_k=0, top_p=1.0, chat=False, system=None,
             eos_ids=None, weight_layout="replicated", length_buckets=False, per_problem=False) -> dict:
    """{"eval_accuracy": greedy pass@1, "eval_length": the greedy completions' mean length in tokens,
    "eval_format": their mean format score (`rewards.format_reward` in the task's answer style; absent
    for a style of a user's own), and with pass_k > 0: "eval_pass@k", "eval_maj@k"}.

    `eos_ids`: the ids that end a completion (an int or a tuple); None = `eos_token_ids(tokenizer)`
    (pass `eos_token_ids(tokenizer, model_path)` to add the model's generation_config.json ids).
    `weight_layout`: the sampler's (config key sampling.weight_layout); `length_buckets`: `generate`'s.
    The pass@k / maj@k samples are drawn as training draws them: `temperature`, `top_k`, `top_p`
    (the config's sampling section); the greedy pass@1 ignores all three.
    `per_problem`: also "eval_correct", f32[E] each held-out problem's greedy score in
    `task.eval_examples` order (the same on every process), for problem-by-problem comparisons.
    """
    examples = task.eval_examples
    prompts = [task.prompt(e) for e in examples]
    eos_ids = tok_lib.eos_token_ids(tokenizer) if eos_ids is None else eos_ids
    common = dict(batch_size=batch_size, max_prompt_length=max_prompt_length,
                  max_new_tokens=max_new_tokens, put=put, chat=chat, system=system, eos_ids=eos_ids,
                  weight_layout=weight_layout, length_buckets=length_buckets)
    greedy = generate(model_config, params, tokenizer, prompts, key=key, temperature=0.0, **common)

    style_known = task.style in rewards_lib.STYLES  # a user's task may name a style of its own

    scored = []

    def score():  # on process 0 only: every process must act on the same numbers (SFT early stop)
        correct = [task.correct(c, e) for c, e in zip(greedy, examples)]
        scored.append(np.asarray(correct, np.float32))
        out = {"eval_accuracy": float(np.mean(correct)), "eval_examples": len(examples),
               "eval_length": float(np.mean([len(tokenizer.encode(c, add_special_tokens=False)) for c in greedy]))}
        if style_known:
            out["eval_format"] = float(np.mean([rewards_lib.format_reward(c, style=task.style) for c in greedy]))
        if pass_k > 0:
            ok = np.array([task.correct(c, e) for c, e in zip(samples, [e for e in examples for _ in range(pass_k)])])
            out[f"eval_pass@{pass_k}"] = float(ok.reshape(len(examples), pass_k).max(axis=1).mean())
            maj = [majority_correct(samples[i * pass_k:(i + 1) * pass_k], e, style=task.style,
                                    score=task.correct) for i, e in enumerate(examples)]
            out[f"eval_maj@{pass_k}"] = float(np.mean(maj))
        return out

    if pass_k > 0:
        repeated = [p for p in prompts for _ in range(pass_k)]  # problem-major
        samples = generate(model_config, params, tokenizer, repeated, key=jax.random.fold_in(key, 1),
                           temperature=temperature, top_k=top_k, top_p=top_p, **common)
    keys = (["eval_accuracy", "eval_examples", "eval_length"] + (["eval_format"] if style_known else [])
            + ([f"eval_pass@{pass_k}", f"eval_maj@{pass_k}"] if pass_k > 0 else []))
    out = on_process_zero(score, keys)
    if per_problem:
        correct = scored[0] if scored else np.zeros(len(examples), np.float32)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            correct = np.asarray(multihost_utils.broadcast_one_to_all(correct))
        out["eval_correct"] = correct
    return out


def evaluate_run(s: build.Setup, params, eval_key, step: int, writer) -> dict:
    """The eval at `step` of a run's policy `params` (greedy accuracy, pass@k / maj@k sampled as
    training samples, with `fold_in(eval_key, step)`): returns its scalars and writes each held-out
    problem's score to the workdir's eval_problems.jsonl through `writer` (a metrics.MetricsWriter)."""
    c = s.config
    out = evaluate(
        s.model_config, params, s.tokenizer, s.task, key=jax.random.fold_in(eval_key, step),
        batch_size=c.train.eval_batch_size, max_prompt_length=c.sampling.max_prompt_length,
        max_new_tokens=c.sampling.max_new_tokens, put=s.put, pass_k=c.train.pass_k,
        temperature=c.sampling.temperature, chat=c.task.chat_template, system=c.task.system_prompt or None,
        eos_ids=s.eos_ids, weight_layout=c.sampling.weight_layout, length_buckets=c.train.length_buckets,
        top_k=c.sampling.top_k, top_p=c.sampling.top_p, per_problem=True)  # pass@k samples as training does
    correct = out.pop("eval_correct")
    writer.write_detail("eval_problems.jsonl", step, {"ids": list(range(len(correct))), "correct": correct})
    return out


def on_process_zero(fn, keys):
    """fn() -> {key: number} for `keys`, computed on process 0 and broadcast, so that every process
    of a multi-host run acts on the same numbers (verifiers have wall-clock limits: two hosts
    scoring for themselves could disagree, and e.g. stop SFT at different steps)."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils
    result = fn() if jax.process_index() == 0 else dict.fromkeys(keys, 0.0)
    values = np.asarray(multihost_utils.broadcast_one_to_all(np.array([result[k] for k in keys], np.float32)))
    return {k: (int(v) if k == "eval_examples" else float(v)) for k, v in zip(keys, values)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config, workdir = cfg_lib.parse_command_line(argv)
    setup = build.setup(config, workdir, for_eval=True)
    metrics = evaluate(setup.model_config, setup.params, setup.tokenizer, setup.task,
                       key=jax.random.key(setup.config.train.seed + 1),
                       batch_size=setup.config.train.eval_batch_size,
                       max_prompt_length=setup.config.sampling.max_prompt_length,
                       max_new_tokens=setup.config.sampling.max_new_tokens, put=setup.put,
                       pass_k=setup.config.train.pass_k, temperature=setup.config.sampling.temperature,
                       top_k=setup.config.sampling.top_k, top_p=setup.config.sampling.top_p,
                       chat=setup.config.task.chat_template, system=setup.config.task.system_prompt,
                       eos_ids=setup.eos_ids, weight_layout=setup.config.sampling.weight_layout,
                       length_buckets=setup.config.train.length_buckets)
    print("RESULT step=%d " % setup.step + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
