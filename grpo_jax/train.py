"""The program: `python -m grpo_jax.train --config experiments/NAME.py --workdir runs/NAME`.

GRPO, as the algorithm box of DeepSeekMath (Shao et al. 2024, Alg. 1) reads, with this module's
names:

    policy <- the model (`build.setup`), warm-started by SFT (`sft.warm_start`)   # GRPO follows SFT
    reference <- a frozen copy of the policy                        (beta > 0)
    for step in 1..train.steps:
        batch      = rollout.collect(...)      # B prompts, G completions each, scored by verifiers
        advantages = group-relative, per prompt  (rollout.update_inputs)
        state      = step_fn(state, ...)       # mu x K clipped-surrogate + KL updates (train_step.py)
        log, evaluate, checkpoint

Eval (greedy accuracy, pass@k / maj@k) runs at step 0, every `train.eval_every` steps and at the
end; checkpoints every `train.checkpoint_every` steps and at the end. Running again with the same
workdir resumes from the last checkpoint, exactly: step t's sampling key is fold_in(key, t) and its
prompts a pure function of t, so nothing but params, optimizer state and step needs restoring.
Launched as several processes (a multi-host TPU VM, or the --coordinator_address flags), it starts
`jax.distributed` first (`build.initialize_distributed`).
"""

import json
import math
import os
import pathlib
import sys
import time

import jax
import numpy as np

from grpo_jax import buckets
from grpo_jax import build
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import evaluate as eval_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import model as model_lib
from grpo_jax import platforms
from grpo_jax import preemption
from grpo_jax import rollout
from grpo_jax import sft
from grpo_jax import sharding
from grpo_jax import train_step as ts
from grpo_jax import weights as weights_lib


def _latest_checkpoint(workdir: pathlib.Path) -> int | None:
    if not (workdir / "checkpoints").exists():
        return None
    with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
        return ckpt.latest_step()


def run(argv, *, stop_after: int | None = None) -> list[dict]:
    """Trains; returns the scalar metric rows written. `stop_after` ends the process's work after
    that many GRPO steps of this invocation, as a crash would (tests use it for resume)."""
    config, workdir = cfg_lib.parse_command_line(argv)
    config = build.schedule_horizon(config, pathlib.Path(workdir))  # validated again in setup
    # Resuming a full fine-tune reads everything from the checkpoint: model.path's weights are not
    # loaded at all (they would only be overwritten, at 4 more bytes a parameter).
    s = build.setup(config, workdir, load_weights=_latest_checkpoint(pathlib.Path(workdir)) is None)
    c, workdir = s.config, s.workdir
    build.check_workdir_config(workdir, c)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        # One writer, atomically (tmp + rename): in a multi-process run over a shared workdir the
        # other processes may be reading config.json in `_check_workdir_config` right now.
        tmp = workdir / f"config.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(cfg_lib.to_dict(c), indent=2, sort_keys=True))
        os.replace(tmp, workdir / "config.json")
    g = c.grpo
    use_reference = g.beta > 0
    optimizer = ts.optimizer_from_config(c)
    schedule = ts.schedule_from_config(c)  # the learning rate each step logs (its first update's)
    # Saves are asynchronous: the device-to-host copy happens inside `save` (the next step may then
    # donate the state), the disk write in Orbax's background thread while the loop goes on;
    # `close` in the finally commits the last one even when the loop raises.
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=c.train.max_checkpoints,
                                 async_save=True)
    guard = preemption.Guard()
    try:
        start = ckpt.latest_step()
        fresh = start is None
        writer = metrics_lib.from_config(c, workdir, progress_total=c.train.steps,
                                           resume_step=-1 if start is None else start)
        rows = []

        def log(step, scalars):
            rows.append(writer.write(step, scalars))
            return rows[-1]

        lora = s.model_config.lora_rank > 0
        # One owner for the weights: the Setup hands them over and keeps no reference (it held a
        # second copy alive for the whole run after SFT).
        params, s = s.params, s._replace(params=None)
        frozen = params if lora else None  # LoRA: the base is frozen and, adapters off, the reference
        if start is None:
            if c.sft.steps > 0:
                print(f"SFT warm start: {c.sft.steps} steps", file=sys.stderr)
                params = sft.warm_start(s._replace(params=params), lambda step, m: log(
                    0, {(k if k.startswith("sft_") else f"sft_{k}"): v for k, v in m.items()} | {"sft_step": step}),
                    donate=True)  # trains the weights in place: no copy beside them
            if lora:  # train adapters only
                trained, ref_params = build.init_adapters(s), None
            else:
                trained = params
                ref_params = build.reference_params(s.model_config, params) if use_reference else None
            state = ts.init_state(trained, optimizer, s.mesh,
                                  entropy_coef=g.entropy_coef if g.adaptive_entropy else None)
            del params, trained
        else:  # restored onto abstract targets: nothing is allocated only to be overwritten
            abstract = (build.abstract_adapters(s.model_config, s.mesh) if lora
                        else weights_lib.abstract_params(s.model_config, s.mesh))
            target = {"train": ts.abstract_state(optimizer, abstract, s.mesh, entropy=g.adaptive_entropy)}
            if use_reference and not lora:  # as build.checkpoint_tree saves it
                target["ref"] = build.abstract_reference(s.model_config, abstract)
            full, _ = ckpt.restore(target)
            state, ref_params = full["train"], full.get("ref")
            del full
            print(f"resumed from {workdir / 'checkpoints'} at step {start}", file=sys.stderr)
        start = start or 0

        def policy_params():  # what the sampler and eval run: the base with the adapters on
            return model_lib.merge_lora(frozen, state.params) if lora else state.params

        state_sh = ts.state_shardings(s.mesh, optimizer, jax.eval_shape(lambda p: p, state.params),
                                      entropy=g.adaptive_entropy)
        second = frozen if lora else ref_params  # the step's second argument: base (LoRA) or reference
        second_sh = sharding.param_shardings(s.mesh, second) if second is not None else None
        step_fn = ts.jit_train_step(
            ts.build_train_step(s.model_config, optimizer, use_reference=use_reference, lora=lora,
                                **ts.step_options(c)),
            s.mesh, state_sh, second_sh)
        hp = ts.hparams_from_config(c)
        # Two independent streams: step t samples with fold_in(train_key, t), eval at t with fold_in(eval_key, t).
        train_key, eval_key = (jax.random.fold_in(jax.random.key(c.train.seed), i) for i in (0, 1))
        G = g.group_size

        def run_eval(step):
            return eval_lib.evaluate_run(s, policy_params(), eval_key, step, writer)

        if fresh:
            dropped = s.prompt_counts
            if any(dropped.values()):  # once per run: the counts also go into the step-0 metrics row
                print(f"dropped prompts longer than sampling.max_prompt_length={c.sampling.max_prompt_length} "
                      f"tokens: {dropped['prompts_dropped_train']} training, {dropped['prompts_dropped_eval']} "
                      f"held-out", file=sys.stderr)
            log(0, {k: float(v) for k, v in dropped.items()} | (run_eval(0) if c.train.eval_every else {}))
            ckpt.save(0, build.checkpoint_tree(c, state, ref_params),
                      {"step": 0, "config_hash": cfg_lib.config_hash(c)}, force=True)

        done = 0
        guard.__enter__()  # from here SIGTERM finishes the step, saves it and exits 0 (preemption.py)
        for step in range(start, c.train.steps):
            if stop_after is not None and done >= stop_after:
                break
            t0 = time.perf_counter()
            gen, valid, sampled_metrics = rollout.collect(s, policy_params(), step, train_key)  # sample + score
            advantages, loss_mask, ended = rollout.update_inputs(c, gen, valid, s.eos_ids)
            t2 = time.perf_counter()

            put = s.put
            ptok, pmask, ctok, cmask = gen.prompt_tokens, gen.prompt_mask, gen.tokens, loss_mask
            if c.train.length_buckets:  # fewer columns, the same loss (buckets.py); lengths below use gen
                ptok, pmask = buckets.trim_prompts(ptok, pmask, c.sampling.max_prompt_length)
                ctok, cmask = buckets.trim_completions(ctok, cmask, c.sampling.max_new_tokens)
            # Dynamic sampling's fill rows carry no loss and count in no denominator (losses.py).
            batch = ts.Batch(put(ptok), put(pmask), put(ctok), put(cmask), put(advantages),
                             put(valid) if g.dynamic_sampling else None,
                             put(gen.rewards.astype(np.float32)) if g.kl_in_reward else None)
            state, step_metrics = step_fn(state, second, batch, hp)
            step_metrics, row_clipped = ts.pop_row_metrics(step_metrics)
            step_metrics, row_advantages = ts.pop_row_advantages(step_metrics)
            host = rollout.batch_metrics(c, gen, ended, update_prompt_width=ptok.shape[1],
                                         update_completion_width=ctok.shape[1]) | sampled_metrics
            # dynamic sampling: reward statistics over everything it sampled (sampled_metrics)
            done += 1
            now = step + 1
            if g.ref_sync_every and now % g.ref_sync_every == 0:
                # TR-DPO: the reference moves toward the policy after this step's update and before
                # its checkpoint (which holds the reference), so a resume sees the same reference.
                ref_params = second = build.sync_reference(ref_params, state.params, g.ref_sync_alpha)
                host["ref_synced"] = 1.0
            is_ckpt = c.train.checkpoint_every and now % c.train.checkpoint_every == 0 or now == c.train.steps
            is_eval = c.train.eval_every and (now % c.train.eval_every == 0 or now == c.train.steps)
            is_samples = c.train.samples_every and now % c.train.samples_every == 0
            # Evals and samples happen on the steps the config names, logged or not.
            if now % c.train.log_every == 0 or is_ckpt or is_eval or is_samples:
                fetched = metrics_lib.fetch(step_metrics)  # blocks: the update's time is in step_seconds
                t3 = time.perf_counter()
                if not math.isfinite(fetched["loss"]):
                    last = ckpt.latest_step()
                    raise FloatingPointError(
                        f"non-finite loss ({fetched['loss']}) at step {now}; stopped without saving. The last "
                        f"good checkpoint is step {last} in {workdir / 'checkpoints'}")
                row = {**host, **fetched, "learning_rate": float(schedule(step * ts.updates_per_step(c))),
                       "sample_seconds": gen.stats["sample_seconds"],
                       "reward_seconds": gen.stats["reward_seconds"], "update_seconds": t3 - t2,
                       "step_seconds": t3 - t0}
                if is_eval:
                    row |= run_eval(now)
                log(now, row)
                if row_advantages is not None:  # kl_in_reward: the step's own advantages (rewards - beta * KL)
                    advantages = eval_lib.to_host(row_advantages)  # fetched only on logged steps
                writer.write_detail("groups.jsonl", now, rollout.group_detail(
                    gen, advantages, valid, group_size=G, clipped=eval_lib.to_host(row_clipped), loss_mask=loss_mask,
                    passes=g.num_iterations))
                if is_samples:
                    e = gen.examples[0]
                    writer.write_text(now, "completion", f"{e.prompt} -> {gen.completions[0]!r} "
                                                         f"(reward {gen.rewards[0]:.2f}, gold {e.answer})")
            stop = guard.stop(now) and now < c.train.steps
            if is_ckpt or stop:
                ckpt.save(now, build.checkpoint_tree(c, state, ref_params),
                          {"step": now, "config_hash": cfg_lib.config_hash(c)}, force=True)
            if stop:
                print(preemption.message(now, workdir / "checkpoints"), file=sys.stderr)
                break
    finally:
        ckpt.close()  # waits for the last save (a preempted run's included), SIGTERM still held
        guard.__exit__(None, None, None)
    writer.close()
    return rows


initialize_distributed = build.initialize_distributed  # where it was before it moved to build.py

# --help's section for the flags `build.initialize_distributed` reads (they are not config keys).
DISTRIBUTED_HELP = """Several processes (one per host; build.initialize_distributed starts jax.distributed):
  --coordinator_address HOST:PORT  process 0's address, the same on every process (env JAX_COORDINATOR_ADDRESS)
  --num_processes N                how many processes take part (env JAX_NUM_PROCESSES)
  --process_id I                   this process's index, 0 .. N-1 (env JAX_PROCESS_ID)
Without them, a cluster JAX detects by itself (a multi-host Cloud TPU VM, SLURM, Open MPI, Kubernetes)
starts with no flags; otherwise the run is one process."""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(cfg_lib.USAGE + "\n\n" + DISTRIBUTED_HELP + "\n\n" + cfg_lib.help_text())
        return 0
    platforms.skip_absent_tpu()  # no libtpu (and its stderr noise) on a machine without a TPU
    try:
        argv = build.initialize_distributed(argv)
        rows = run(argv)
    except cfg_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    evals = [r for r in rows if "eval_accuracy" in r]
    if evals and jax.process_index() == 0:  # one RESULT line per run, not per process
        print(f"RESULT eval_accuracy_first={evals[0]['eval_accuracy']:.4f} "
              f"eval_accuracy_last={evals[-1]['eval_accuracy']:.4f} steps={rows[-1]['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
