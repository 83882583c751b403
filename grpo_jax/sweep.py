"""`python -m grpo_jax.sweep`: a grid of configurations x seeds, each cell an ordinary training run,
with the cells that differ only in what one compiled program can carry trained as ONE program.

    python -m grpo_jax.sweep --config experiments/X.py --grid grpo.beta=0,0.04 \
        --grid grpo.epsilon_high=0.2,0.28 --seeds 3 --workdir runs/sweeps/NAME

Per step of a program of C cells (`run_program`), with the trainer's own pieces:

    completions = sampler(stacked policies, each cell's prompts x G_max)   one vmapped call, [C, N, T]
    rewards     = rollout.score(cell's verifiers, decoded completions)     on the host, per cell
    advantages  = rollout.update_inputs over each cell's first G rows      the trainer's own
    state       = vmap(train_step)(stacked state, reference, batch, hp)    one vmapped update

What can vary inside a program (VMAPPED_KEYS): the seed (sampling key, data order), the traced
scalars of the step (epsilon, epsilon_high, beta, temperature), the learning rate (a factor on the
optimizer's updates, which are linear in it) and the group size G. Every cell samples G_max
completions per prompt; a cell with G < G_max gives its unused rows row_mask 0 (`Batch.row_mask`):
no loss, no place in any denominator, advantages over its G used rows alone, so the cell equals a
genuine group_size = G run of the trainer (tests/test_sweep_grid.py checks metrics and parameters).
Anything else (a loss type, a model, a task, a length) makes another program; programs run one
after another, and a DAPO cell (dynamic sampling: a per-cell host loop) runs alone through
`python -m grpo_jax.train`.

Each cell is an ordinary workdir (config.json, metrics.jsonl, TensorBoard, checkpoints, the
per-problem eval and per-group detail files), so `grpo_jax.evaluate`, the plots, `grpo_jax.report`
and resume work on it; rerunning the command resumes every cell exactly. `sweep.json` in the sweep
directory records the grid for the report.
"""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grpo_jax import model as model_lib
from grpo_jax import preemption
from grpo_jax import rewards as rewards_lib
from grpo_jax import sampling
from grpo_jax import tokenizer as tok_lib
from grpo_jax import train_step as ts


# ==================================================================================================
# `python -m grpo_jax.sweep`: a grid of configurations x seeds, for any task, verifier and model
# ==================================================================================================
# What one compiled program can carry per cell: traced scalars of the step (HParams), the sampling
# key (the seed), the learning rate (a factor on the optimizer's updates, which are linear in it) and
# the group size (a row mask over G_max rows per prompt). Cells that differ in anything else (a loss
# type, a model, a task, a length) run one after another.
VMAPPED_KEYS = ("train.seed", "grpo.beta", "grpo.epsilon", "grpo.epsilon_high", "sampling.temperature",
                "optim.learning_rate", "grpo.group_size")
SWEEP_FILE = "sweep.json"
SWEEP_USAGE = ("usage: python -m grpo_jax.sweep --config experiments/NAME.py --grid KEY=V1,V2 [--grid ...] "
               "--seeds N --workdir runs/sweeps/NAME [--config.KEY=VALUE ...] [--cells_per_program C] "
               "[--one_program] [--fit auto|on|off] [--memory_gib G]")


def runs_as_trainer(config) -> bool:
    """Cells the vmapped program does not carry run as the trainer itself, one child process each:
    DAPO dynamic sampling (a host loop of sampling rounds), and the switches that add state or inputs
    to the step (grpo.adaptive_entropy's controller, grpo.kl_in_reward's rewards, grpo.ref_sync_every's
    reference refresh)."""
    g = config.grpo
    return g.dynamic_sampling or g.adaptive_entropy or g.kl_in_reward or g.ref_sync_every > 0


class Preempted(Exception):
    """SIGTERM stopped a program at a step boundary, every cell saved at `step` (preemption.py)."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class Cell(NamedTuple):
    """One (configuration, seed) of a grid: an ordinary training run in its own workdir."""
    index: int
    label: str  # the configuration: "grpo.beta=0.0 grpo.epsilon_high=0.28" (its seeds share it)
    seed: int  # train.seed
    values: dict  # grid key -> value
    overrides: tuple  # KEY=VALUE strings that make this cell's config from the experiment file
    config: Any  # cfg_lib.Config, validated
    workdir: Any  # pathlib.Path


def parse_grid(specs) -> dict:
    """["grpo.beta=0,0.04", ...] -> {"grpo.beta": ["0", "0.04"]} (texts, parsed by the config's
    own override parser later); a key given twice, or with no value, is an error naming it."""
    from grpo_jax import ConfigError
    grid = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r} must look like section.key=value1,value2")
        key, text = spec.split("=", 1)
        values = [v.strip() for v in text.split(",")]
        if not all(values):
            raise ConfigError(f"--grid {key}: empty value in {text!r}")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice")
        if key == "train.seed":
            raise ConfigError("--grid train.seed: seeds are given by --seeds N (train.seed, train.seed + 1, ...)")
        grid[key] = values
    return grid


def expand_grid(config_path, overrides, grid: dict, seeds: int, workdir, *, num_devices=None,
                platform=None) -> list:
    """Every (configuration x seed) cell, each config loaded and validated (against the devices when
    given): an unknown key or an invalid value is a ConfigError naming the key and the cell, before
    any work. Cells are numbered configuration-major; seeds are train.seed, train.seed + 1, ..."""
    import itertools
    import pathlib

    from grpo_jax import ConfigError
    from grpo_jax import config as cfg_lib

    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least 1")
    base = cfg_lib.load_config(config_path, list(overrides))
    for key, values in grid.items():  # an unknown key or an unparsable value, named once
        for v in values:
            cfg_lib.apply_overrides(base, [f"{key}={v}"])
    cells = []
    for combo in itertools.product(*grid.values()):
        assignment = [f"{k}={v}" for k, v in zip(grid, combo)]
        parsed = cfg_lib.to_dict(cfg_lib.apply_overrides(base, assignment))
        values = {k: parsed[k.split(".")[0]][k.split(".")[1]] if k.count(".") == 1 else v
                  for k, v in zip(grid, combo)}
        label = " ".join(f"{k}={values[k]}" for k in grid) or "base"
        for k in range(seeds):
            seed = base.train.seed + k
            cell_overrides = tuple(overrides) + tuple(assignment) + (f"train.seed={seed}",)
            try:
                config = cfg_lib.validate(cfg_lib.apply_overrides(base, [*assignment, f"train.seed={seed}"]),
                                          num_devices=num_devices, platform=platform)
            except ConfigError as e:
                raise ConfigError(f"grid cell {label!r} (seed {seed}): {e}") from None
            index = len(cells)
            name = f"{index:03d}-" + "-".join(f"{k.split('.')[-1]}={values[k]}" for k in grid) + f"-seed{seed}"
            cells.append(Cell(index, label, seed, values, cell_overrides, config,
                              pathlib.Path(workdir) / "cells" / name.replace("/", "_")))
    return cells


def _program_key(cell: Cell):
    """What must be equal for cells to share one compiled program: the config without VMAPPED_KEYS.
    DAPO dynamic sampling (a per-cell host loop) runs each cell alone, through the trainer."""
    from grpo_jax import config as cfg_lib
    d = cfg_lib.to_dict(cell.config)
    for key in VMAPPED_KEYS:
        section, name = key.split(".")
        d[section] = {k: v for k, v in d[section].items() if k != name}
    alone = runs_as_trainer(cell.config)
    return json.dumps(d, sort_keys=True, default=str) + (f"#alone{cell.index}" if alone else "")


def plan_programs(cells: list, *, cells_per_program: int | None = None, one_program: bool = False) -> list:
    """Cells partitioned into programs (lists of cells, each run as one vmapped program; a cell with
    dynamic sampling runs alone through `python -m grpo_jax.train`), at most `cells_per_program` each. `one_program`: refuse a grid that
    needs more than one kind of program, naming the keys that cannot vary inside one."""
    from grpo_jax import ConfigError
    from grpo_jax import config as cfg_lib

    groups = {}
    for cell in cells:
        groups.setdefault(_program_key(cell), []).append(cell)
    if one_program and len(groups) > 1:
        first = cfg_lib.to_dict(cells[0].config)
        differ = sorted({f"{s}.{k}" for cell in cells for s, sec in cfg_lib.to_dict(cell.config).items()
                         for k, v in sec.items() if v != first[s][k]} - set(VMAPPED_KEYS))
        why = f"keys {', '.join(differ)} cannot vary inside one program" if differ else \
            "grpo.dynamic_sampling / adaptive_entropy / kl_in_reward / ref_sync_every run each cell alone"
        raise ConfigError(f"--one_program: {why} (vmapped: {', '.join(VMAPPED_KEYS)})")
    size = cells_per_program or len(cells)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def fit_programs(programs: list, *, memory_gib: float | None = None, log=print) -> list:
    """Each program split into programs of as many cells as fit this machine's devices: the plan tool
    compiles the program's step and sampler at C cells (`plan.plan(..., cells=C)`: the compiled peak
    per device against the memory the backend reports, or `memory_gib`), halving C until they fit.
    A program whose single cell does not fit is kept as one-cell programs (the trainer would not fit
    either; its own out-of-memory error says where)."""
    import io

    from grpo_jax import config as cfg_lib
    from grpo_jax import plan as plan_lib

    topo = plan_lib.local_topology(memory_gib=memory_gib)
    out = []
    for program in programs:
        if len(program) == 1 or runs_as_trainer(program[0].config):
            out.append(program)
            continue
        config = cfg_lib.from_dict(cfg_lib.to_dict(program[0].config))
        config.grpo.group_size = max(c.config.grpo.group_size for c in program)  # what the program samples
        result = plan_lib.plan(config, topo, cells=len(program), out=io.StringIO())
        size = result["max_cells"] or 1
        log(f"fit: {len(program)} cells need {result['per_chip_gib']:.2f} GiB per device of "
            f"{topo.hbm_gib:.2f}: " + (f"{size} per program" if size < len(program) else "they fit"))
        out += [program[i:i + size] for i in range(0, len(program), size)]
    return out


def _recorded_programs(workdir, cells) -> list | None:
    """The programs a sweep directory's first launch ran (sweep.json), so that a resume packs the cells
    the same way whatever the machine (cells of one program resume from a step they all hold)."""
    import pathlib

    path = pathlib.Path(workdir) / SWEEP_FILE
    recorded = json.loads(path.read_text()).get("programs") if path.exists() else None
    if not recorded or sorted(i for p in recorded for i in p) != list(range(len(cells))):
        return None
    return [[cells[i] for i in p] for p in recorded]


def _write_sweep_file(workdir, config_path, overrides, grid, seeds, cells, programs=None) -> None:
    """sweep.json: what the grid is and where each cell lives (read by `grpo_jax.report`). A sweep
    directory holds one grid: running again with another is an error, not a mixture."""
    import pathlib

    from grpo_jax import ConfigError
    workdir = pathlib.Path(workdir)
    record = {"config": str(config_path), "overrides": list(overrides), "grid": {k: list(v) for k, v in grid.items()},
              "seeds": [c.seed for c in cells if c.label == cells[0].label],
              "cells": [{"workdir": str(c.workdir.relative_to(workdir)), "label": c.label, "seed": c.seed,
                         "values": c.values} for c in cells]}
    if programs is not None:
        record["programs"] = [[c.index for c in p] for p in programs]
    path = workdir / SWEEP_FILE
    if path.exists():  # a resume: the same grid and seeds (each cell's config is checked by the trainer's rule)
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in ("grid", "seeds", "cells")} != {k: record[k] for k in ("grid", "seeds", "cells")}:
            raise ConfigError(f"{path} holds another grid or other seeds; use a new --workdir")
        if programs is None and "programs" in old:  # the grid's check before packing keeps the packing
            record["programs"] = old["programs"]
        if old.get("overrides") == record["overrides"] and old.get("programs") == record.get("programs"):
            return
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


def _scaled_updates(optimizer: optax.GradientTransformation, factor) -> optax.GradientTransformation:
    """`optimizer` with its updates times `factor` (a traced per-cell scalar): the updates of AdamW
    under a learning-rate schedule are linear in the learning rate (weight decay included), so
    factor = lr_cell / lr_program gives the cell's own learning rate; the state is unchanged (a
    cell's checkpoint is an ordinary run's)."""
    def update(updates, state, params=None):
        updates, state = optimizer.update(updates, state, params)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state
    return optax.GradientTransformation(optimizer.init, update)


def _stacked_sharding(tree_of_shardings):
    """A sharding per leaf for the same tree with a leading cell axis (replicated)."""
    return jax.tree.map(lambda sh: jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec(None, *sh.spec)),
                        tree_of_shardings)


def _stack(trees: list, shardings):
    """[tree, ...] -> one tree with a leading cell axis, placed on `shardings` (per leaf, stacked)."""
    return jax.jit(lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs), out_shardings=shardings)(*trees)


def _cell(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def program_batch_sharding(mesh):
    """[C, N, ...] arrays of a program: the cell axis replicated, the rows over the batch axes."""
    from grpo_jax import sharding
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))


def program_functions(c0, mc: model_lib.ModelConfig, optimizer: optax.GradientTransformation, mesh, *, eos_ids,
                      use_reference: bool, second_axis, state_sh, second_sh):
    """The two jitted programs of a sweep program of C cells (config `c0`, its group size G_max):

      step(state [C], second, batch [C, N, ...], hparams [C], lr_factor [C]) -> (state, metrics [C])
          vmapped `train_step.build_train_step` (the trainer's step), the state donated; `second` is the
          reference or LoRA's frozen base, shared (second_axis None) or one per cell (0)
      sample(params [C], frozen, prompt_tokens [C, N, P], prompt_mask, keys [C], temperatures [C])
          -> (tokens, mask) [C, N, T]: vmapped `sampling.sample_traced`, G_max rows per prompt

    `state_sh`: the stacked TrainState shardings. `grpo_jax.plan --cells C` compiles the same two."""
    from grpo_jax import sharding

    g, sp = c0.grpo, c0.sampling
    lora = mc.lora_rank > 0
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = program_batch_sharding(mesh)

    def cell_step(state, second, batch, hp, lr_factor):
        step = ts.build_train_step(mc, _scaled_updates(optimizer, lr_factor), use_reference=use_reference,
                                   lora=lora, **ts.step_options(c0))
        return step(state, second, batch, hp)

    step_fn = jax.jit(sharding.under_mesh(jax.vmap(cell_step, in_axes=(0, second_axis, 0, 0, 0)), mesh),
                      in_shardings=(state_sh, second_sh, batch_sh, rep, rep),
                      out_shardings=(state_sh, rep), donate_argnums=(0,))

    def sample_cells(params, frozen, ptok, pmask, step_keys, temps):
        def one(p, t, m, k, temp):
            # Lockstep whatever sampling.engine says: the engines draw the same samples (per-row streams).
            r = sampling.sample_traced(mc, model_lib.merge_lora(frozen, p) if lora else p, t, m, k,
                                       max_new_tokens=sp.max_new_tokens, eos_id=eos_ids, temperature=temp,
                                       top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p, group_size=g.group_size,
                                       logps=False)
            return r.tokens, r.mask
        return jax.vmap(one)(params, ptok, pmask, step_keys, temps)

    sampler = jax.jit(sample_cells, in_shardings=(state_sh.params, second_sh if lora else None, batch_sh, batch_sh,
                                                  rep, rep), out_shardings=batch_sh)
    return step_fn, sampler


def run_program(cells: list, *, log=print) -> None:
    """Trains the cells of one program (`plan_programs`) together: per step, one vmapped sampler call
    for every cell (G_max completions per prompt), each cell's completions scored by its verifiers on
    the host (`rollout.score`, as the trainer does), advantages over each cell's first G rows
    (`rollout.update_inputs` on them: the trainer's own), then one vmapped `train_step` (row_mask 0 on
    the rows a smaller G does not use: no loss, no place in any denominator). Each cell logs, evaluates
    and checkpoints into its own workdir as `train.run` would; a workdir with checkpoints resumes, and
    all cells of the program resume from the latest step they all hold."""
    import pathlib
    import sys
    import time

    from grpo_jax import build, buckets, rollout, sft, sharding
    from grpo_jax import checkpoint as ckpt_lib
    from grpo_jax import config as cfg_lib
    from grpo_jax import metrics as metrics_lib
    from grpo_jax import evaluate as eval_lib
    from grpo_jax import tasks as tasks_lib
    from grpo_jax import weights as weights_lib

    C = len(cells)
    configs = []
    for cell in cells:  # the trainer's own checks and config.json, per cell
        config = build.schedule_horizon(cfg_lib.from_dict(cfg_lib.to_dict(cell.config)), cell.workdir)
        build.check_workdir_config(cell.workdir, config)
        configs.append(config)
    g_max = max(c.grpo.group_size for c in configs)
    c0 = cfg_lib.from_dict(cfg_lib.to_dict(configs[0]))
    c0.grpo.group_size = g_max
    ckpts = [ckpt_lib.Checkpointer(cell.workdir / "checkpoints", max_to_keep=c.train.max_checkpoints,
                                   async_save=True) for cell, c in zip(cells, configs)]
    guard = preemption.Guard()
    try:
        common = set.intersection(*(set(ck.all_steps()) for ck in ckpts))
        start = max(common) if common else None
        if start is None and any(ck.all_steps() for ck in ckpts):
            raise cfg_lib.ConfigError(f"the cells {[str(c.workdir) for c in cells]} hold checkpoints of no "
                                      "common step: they were not written by one program; use a new --workdir")
        lora = c0.model.lora_rank > 0
        s = build.setup(c0, cells[0].workdir, load_weights=start is None or lora)
        for cell, c in zip(cells, configs):
            cell.workdir.mkdir(parents=True, exist_ok=True)
            if jax.process_index() == 0:
                tmp = cell.workdir / f"config.json.tmp{os.getpid()}"
                tmp.write_text(json.dumps(cfg_lib.to_dict(c), indent=2, sort_keys=True))
                os.replace(tmp, cell.workdir / "config.json")
        # Per cell: its task (the data order follows train.seed), verifiers and config; one model.
        setups = []
        for c in configs:
            task, counts = tasks_lib.fit_prompts(tasks_lib.from_config(c), s.tokenizer, c)
            setups.append(s._replace(config=c, task=task, verifiers=rewards_lib.from_config(c, task), params=None,
                                     prompt_counts=counts))
        # wandb (train.loggers): one run per cell, grouped by the sweep's directory (workdir/cells/NAME).
        writers = [metrics_lib.from_config(c, cell.workdir, wandb_group=cell.workdir.parent.parent.name,
                                           progress=False, progress_total=c.train.steps,
                                           resume_step=-1 if start is None else start)
                   for cell, c in zip(cells, configs)]
        mc, mesh = s.model_config, s.mesh
        optimizer = ts.optimizer_from_config(configs[0])
        use_reference = any(c.grpo.beta > 0 for c in configs)
        base = s.params  # loaded (or random-init) weights of cell 0's seed; LoRA: the frozen base
        shared_start = lora or (c0.model.path and c0.sft.steps == 0) or len({c.train.seed for c in configs}) == 1

        def start_params(i, sft_rows=None):  # a cell's policy before GRPO: init (or load) + SFT, as train.run
            c = configs[i]
            if lora:
                return build.init_adapters(setups[i]._replace(params=base))
            if c.train.seed == configs[0].train.seed or shared_start and c0.sft.steps == 0:
                params = base
            elif c.model.path:
                params = weights_lib.from_config(c, s.tokenizer, mesh)[1]
            else:
                params = sharding.init_params_sharded(mc, jax.random.key(c.train.seed), mesh)
            if c.sft.steps > 0:
                log(f"SFT warm start of {cells[i].workdir.name}: {c.sft.steps} steps")
                params = sft.warm_start(setups[i]._replace(params=params), lambda step, m: sft_rows is not None and
                                        sft_rows.append({(k if k.startswith("sft_") else f"sft_{k}"): v
                                                         for k, v in m.items()} | {"sft_step": step}))
            return params

        abstract = (build.abstract_adapters(mc, mesh) if lora else weights_lib.abstract_params(mc, mesh))
        state_sh = ts.state_shardings(mesh, optimizer, abstract)
        stacked_state_sh = _stacked_sharding(state_sh)
        ref_sh = None
        if use_reference and not lora:
            ref_sh = sharding.param_shardings(mesh, build.abstract_reference(mc, abstract))
        if start is None:
            by_seed, trained = {}, []
            for i, c in enumerate(configs):
                key = None if shared_start and not lora else c.train.seed
                if key not in by_seed or lora:
                    rows = []
                    by_seed[key] = start_params(i, rows), rows
                params, rows = by_seed[key]
                for row in rows:  # every cell of a start logs its SFT, as its own run would
                    writers[i].write(0, row)
                trained.append(params)
            states = [ts.init_state(p, optimizer, mesh) for p in trained]
            refs = None
            if ref_sh is not None:  # one reference per distinct start, shared by the cells it starts
                by_start = {}
                for p in trained:
                    if id(p) not in by_start:
                        by_start[id(p)] = build.reference_params(mc, p)
                refs = [by_start[id(p)] for p in trained]
        else:  # restored onto abstract targets, each cell from its own workdir
            states, refs = [], ([] if ref_sh is not None else None)
            target_ref = build.abstract_reference(mc, abstract) if ref_sh is not None else None
            for i, (ck, c) in enumerate(zip(ckpts, configs)):
                target = {"train": ts.abstract_state(optimizer, abstract, mesh)}
                if c.grpo.beta > 0 and target_ref is not None:
                    target["ref"] = target_ref
                full, _ = ck.restore(target, step=start)
                states.append(full["train"])
                if refs is not None:
                    refs.append(full.get("ref"))
            if refs is not None:  # a beta = 0 cell saved none: a cell of the same start has it, or rebuild it
                for i, r in enumerate(refs):
                    if r is None:
                        same = [refs[j] for j, c in enumerate(configs) if refs[j] is not None and (
                            shared_start or c.train.seed == configs[i].train.seed)]
                        refs[i] = same[0] if same else build.reference_params(mc, start_params(i))
            log(f"resumed {C} cells from step {start}")
        shared_ref = refs is not None and (shared_start or all(r is refs[0] for r in refs))
        state = _stack(states, stacked_state_sh)
        # One owner for the weights, the stacked state: the per-cell trees and, in a full fine-tune, the
        # loaded weights would stay alive for the whole run (SmolLM2: 0.54 GB a copy).
        states = trained = by_seed = None
        if not lora:
            base, s = None, s._replace(params=None)
        if lora:
            second, second_axis, second_sh = base, None, sharding.param_shardings(mesh, base)
        elif refs is None:
            second, second_axis, second_sh = None, None, None
        elif shared_ref:
            second, second_axis, second_sh = refs[0], None, ref_sh
        else:
            second_sh = _stacked_sharding(ref_sh)
            second, second_axis = _stack(refs, second_sh), 0
        refs_by_cell = refs
        start = start or 0

        batch_sh = program_batch_sharding(mesh)
        put = lambda x: jax.make_array_from_callback(  # noqa: E731  [C, N, ...] numpy, rows over the batch axes
            np.shape(x), batch_sh, lambda idx, x=np.asarray(x): x[idx])
        row_masks = [np.arange(c0.train.prompts_per_step * g_max) % g_max < c.grpo.group_size for c in configs]
        use_row_mask = any(c.grpo.group_size < g_max for c in configs)
        step_fn, sampler = program_functions(c0, mc, optimizer, mesh, eos_ids=s.eos_ids, use_reference=use_reference,
                                             second_axis=second_axis, state_sh=stacked_state_sh, second_sh=second_sh)
        hp = jax.tree.map(lambda *x: jnp.stack(x), *[ts.hparams_from_config(c) for c in configs])
        lr_factor = jnp.asarray([c.optim.learning_rate / configs[0].optim.learning_rate for c in configs], jnp.float32)
        temperatures = hp.temperature
        schedules = [ts.schedule_from_config(c) for c in configs]
        keys = [[jax.random.fold_in(jax.random.key(c.train.seed), i) for i in (0, 1)] for c in configs]
        train_keys = jnp.stack([k[0] for k in keys])

        def policy(params):  # the sampled / evaluated policy of one cell: LoRA adds its adapters
            return model_lib.merge_lora(base, params) if lora else params

        sp = c0.sampling

        def generate(step):
            """Every cell's Generation for `step` (prompts of its own data order), and the sampler time."""
            t0 = time.perf_counter()
            b = c0.train.prompts_per_step
            examples = [[st.task.train_example(step * b + i) for i in range(b)] for st in setups]
            encoded = [tok_lib.encode_prompts(s.tokenizer, [st.task.prompt(e) for e in ex],
                                              max_length=sp.max_prompt_length, chat=c0.task.chat_template,
                                              system=c0.task.system_prompt or None)
                       for st, ex in zip(setups, examples)]
            ptok, pmask = np.stack([e[0] for e in encoded]), np.stack([e[1] for e in encoded])  # [C, B, P]
            if c0.train.length_buckets:  # one width for all cells: the bucket of the longest prompt
                t, m = buckets.trim_prompts(ptok.reshape(C * b, -1), pmask.reshape(C * b, -1))
                ptok, pmask = t.reshape(C, b, -1), m.reshape(C, b, -1)
            ptok, pmask = np.repeat(ptok, g_max, axis=1), np.repeat(pmask, g_max, axis=1)  # [C, N, P]
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(train_keys)
            n = b * g_max
            rows = sp.batch_size or n
            chunks = n // rows
            parts = []
            for i in range(chunks):  # as rollout.sample_rows: chunk i draws with fold_in(key, i)
                part = slice(i * rows, (i + 1) * rows)
                k = step_keys if chunks == 1 else jax.vmap(lambda key: jax.random.fold_in(key, i))(step_keys)
                parts.append(jax.device_get(sampler(state.params, base if lora else None, put(ptok[:, part]),
                                                    put(pmask[:, part]), k, temperatures)))
            tokens = np.concatenate([p[0] for p in parts], axis=1)
            mask = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32)
            sampled = time.perf_counter()
            gens = []
            for j, st in enumerate(setups):
                golds = [e for e in examples[j] for _ in range(g_max)]
                rewards, components, stats, completions = rollout.score(
                    st, lambda j=j: tok_lib.decode_completions(s.tokenizer, tokens[j], mask[j], eos_id=s.eos_ids),
                    golds, mask[j].sum(axis=1))
                gens.append(rollout.Generation(examples[j], ptok[j], pmask[j], tokens[j], mask[j], rewards,
                                               components, stats, completions))
            return gens, sampled - t0, time.perf_counter() - sampled

        if start == 0 and not any(ck.all_steps() for ck in ckpts):
            for i, c in enumerate(configs):
                dropped = setups[i].prompt_counts
                row = {k: float(v) for k, v in dropped.items()}
                if c.train.eval_every:
                    row |= eval_lib.evaluate_run(setups[i], policy(_cell(state.params, i)), keys[i][1], 0,
                                                     writers[i])
                writers[i].write(0, row)
                ckpts[i].save(0, build.checkpoint_tree(c, _cell(state, i), _ref(refs_by_cell, second, second_axis, i)),
                              {"step": 0, "config_hash": cfg_lib.config_hash(c)}, force=True)

        steps = c0.train.steps
        guard.__enter__()  # from here SIGTERM finishes the step, saves every cell at it, exits 0
        for step in range(start, steps):
            t0 = time.perf_counter()
            gens, sample_seconds, reward_seconds = generate(step)
            t2 = time.perf_counter()
            per_cell = []
            for j, (c, gen) in enumerate(zip(configs, gens)):
                used = row_masks[j]
                sub = gen._replace(**{f: getattr(gen, f)[used] for f in ("prompt_tokens", "prompt_mask", "tokens",
                                                                          "mask", "rewards")},
                                   components={k: v[used] for k, v in gen.components.items()})
                adv_used, loss_used, ended_used = rollout.update_inputs(c, sub, np.ones(used.sum(), np.float32),
                                                                         s.eos_ids)
                adv = np.zeros(used.shape, np.float32)
                adv[used] = adv_used
                loss_mask = np.zeros_like(gen.mask)
                loss_mask[used] = loss_used
                per_cell.append((sub, adv, loss_mask, ended_used))
            ctok = np.stack([gen.tokens for gen in gens])
            cmask = np.stack([p[2] for p in per_cell])
            ptok, pmask = np.stack([gen.prompt_tokens for gen in gens]), np.stack([gen.prompt_mask for gen in gens])
            if c0.train.length_buckets:  # one width for all cells (the same loss: buckets.py)
                T = ctok.shape[-1]
                t, m = buckets.trim_completions(ctok.reshape(-1, T), cmask.reshape(-1, T), sp.max_new_tokens)
                ctok, cmask = t.reshape(C, -1, t.shape[-1]), m.reshape(C, -1, m.shape[-1])
                P = ptok.shape[-1]
                t, m = buckets.trim_prompts(ptok.reshape(-1, P), pmask.reshape(-1, P), sp.max_prompt_length)
                ptok, pmask = t.reshape(C, -1, t.shape[-1]), m.reshape(C, -1, m.shape[-1])
            advantages = np.stack([p[1] for p in per_cell])
            batch = ts.Batch(put(ptok), put(pmask), put(ctok), put(cmask), put(advantages),
                             put(np.stack(row_masks).astype(np.float32)) if use_row_mask else None)
            state, step_metrics = step_fn(state, second, batch, hp, lr_factor)
            step_metrics, row_clipped = ts.pop_row_metrics(step_metrics)  # [C] scalars, [C, N]
            now = step + 1
            fetched = None
            stop = guard.stop(now) and now < steps
            for j, (c, cell) in enumerate(zip(configs, cells)):
                sub, adv, _, ended = per_cell[j]
                t_ = c.train
                is_ckpt = t_.checkpoint_every and now % t_.checkpoint_every == 0 or now == steps
                is_eval = t_.eval_every and (now % t_.eval_every == 0 or now == steps)
                is_samples = t_.samples_every and now % t_.samples_every == 0
                if now % t_.log_every == 0 or is_ckpt or is_eval or is_samples:
                    if fetched is None:
                        fetched, clipped = jax.device_get((step_metrics, row_clipped))
                        t3 = time.perf_counter()
                    cell_metrics = {k: float(v[j]) for k, v in fetched.items()}
                    if not np.isfinite(cell_metrics["loss"]):
                        raise FloatingPointError(f"non-finite loss ({cell_metrics['loss']}) at step {now} in cell "
                                                 f"{cell.workdir}; stopped without saving")
                    host = rollout.batch_metrics(c, sub, ended, update_prompt_width=ptok.shape[-1],
                                                 update_completion_width=ctok.shape[-1])
                    row = {**host, **cell_metrics,
                           "learning_rate": float(schedules[j](step * ts.updates_per_step(c))),
                           "sample_seconds": sample_seconds, "reward_seconds": reward_seconds,
                           "update_seconds": t3 - t2, "step_seconds": t3 - t0, "sweep_cells": float(C)}
                    if is_eval:
                        row |= eval_lib.evaluate_run(setups[j], policy(_cell(state.params, j)), keys[j][1], now,
                                                         writers[j])
                    writers[j].write(now, row)
                    used = row_masks[j]
                    writers[j].write_detail("groups.jsonl", now, rollout.group_detail(
                        sub, adv[used], np.ones(int(used.sum())), group_size=c.grpo.group_size,
                        clipped=clipped[j][used], loss_mask=per_cell[j][2][used], passes=c.grpo.num_iterations))
                    if is_samples:
                        e = sub.examples[0]
                        writers[j].write_text(now, "completion", f"{e.prompt} -> {sub.completions[0]!r} "
                                                                 f"(reward {sub.rewards[0]:.2f}, gold {e.answer})")
                if is_ckpt or stop:
                    ckpts[j].save(now, build.checkpoint_tree(c, _cell(state, j),
                                                             _ref(refs_by_cell, second, second_axis, j)),
                                  {"step": now, "config_hash": cfg_lib.config_hash(c)}, force=True)
            log(f"step {now}/{steps}: {C} cells, " + " | ".join(
                f"{float(np.mean(gen.rewards[m])):.3f}" for gen, m in zip(gens, row_masks)) + " reward")
            if stop:
                raise Preempted(now)
        for w in writers:
            w.close()
    except Preempted:
        for w in writers:
            w.close()
        raise
    finally:
        for ck in ckpts:
            ck.close()  # waits for the last saves (a preempted program's included), SIGTERM still held
        guard.__exit__(None, None, None)
    print(f"program of {C} cells done", file=sys.stderr)


def _ref(refs_by_cell, second, second_axis, i):
    """Cell i's reference for its checkpoint (None without one; LoRA's is the base, never saved)."""
    if refs_by_cell is None:
        return None
    return _cell(second, i) if second_axis == 0 else refs_by_cell[i]


def run_grid(argv) -> list:
    """The sweep program (module section above); returns the cells. Every cell's config is validated
    and the sweep directory's grid checked before any model work."""
    import argparse
    import pathlib
    import sys

    from grpo_jax import config as cfg_lib

    parser = argparse.ArgumentParser(prog="python -m grpo_jax.sweep", usage=SWEEP_USAGE, add_help=False)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--grid", action="append", default=[])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cells_per_program", type=int, default=0)
    parser.add_argument("--one_program", action="store_true")
    parser.add_argument("--fit", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--memory_gib", type=float, default=None)
    known, rest = parser.parse_known_args(argv)
    overrides = []
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--config."):
            raise cfg_lib.ConfigError(f"unknown argument {arg!r}: {SWEEP_USAGE}")
        overrides.append(cfg_lib.override_item(arg, rest))
    if known.cells_per_program < 0:
        raise cfg_lib.ConfigError(f"--cells_per_program {known.cells_per_program}: must be >= 1 (0: no limit)")
    grid = parse_grid(known.grid)
    workdir = pathlib.Path(known.workdir)
    cells = expand_grid(known.config, overrides, grid, known.seeds, workdir, num_devices=jax.device_count(),
                        platform=jax.default_backend())
    if known.memory_gib is not None and known.memory_gib <= 0:
        raise cfg_lib.ConfigError(f"--memory_gib {known.memory_gib}: must be > 0")
    programs = plan_programs(cells, cells_per_program=known.cells_per_program or None,
                             one_program=known.one_program)
    _write_sweep_file(workdir, known.config, overrides, grid, known.seeds, cells)  # the grid checked first
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    recorded = _recorded_programs(workdir, cells)
    # Packing by memory: the plan tool's compiled peak against the devices' memory. "auto" checks on
    # an accelerator; a CPU's devices share the host's RAM and the check costs compiles, so only "on".
    fit = known.fit == "on" or known.fit == "auto" and jax.default_backend() != "cpu"
    if recorded is not None:
        if [len(p) for p in recorded] != [len(p) for p in programs]:
            log("sweep: packing the cells as the first launch did (" + ", ".join(str(len(p)) for p in recorded)
                + f" per program, {SWEEP_FILE})")
        programs = recorded
    elif fit:
        programs = fit_programs(programs, memory_gib=known.memory_gib, log=log)
    _write_sweep_file(workdir, known.config, overrides, grid, known.seeds, cells, programs)
    log(f"sweep: {len(cells)} cells ({len(cells) // known.seeds} configurations x {known.seeds} seeds) in "
        f"{len(programs)} program(s): " + ", ".join(str(len(p)) for p in programs))
    for program in programs:
        if runs_as_trainer(program[0].config):  # a host loop per cell: the trainer itself, as a child
            import subprocess
            cell = program[0]
            argv = [sys.executable, "-m", "grpo_jax.train", "--config", str(known.config), "--workdir",
                    str(cell.workdir)] + [f"--config.{o}" for o in cell.overrides]
            # wandb groups the child's run with the others of this sweep (as run_program's wandb_group).
            child = subprocess.Popen(argv, env={**os.environ, "WANDB_RUN_GROUP": workdir.name})
            # SIGTERM goes on to the trainer, which saves at its step boundary and exits 0.
            with preemption.Guard(log=log, forward=lambda: child.poll() is None and child.terminate()) as guard:
                code = child.wait()
            if code:
                raise cfg_lib.ConfigError(f"the trainer failed on cell {cell.workdir} (its output is above): "
                                          + " ".join(argv[1:]))
            if guard.received:
                log(f"preempted: stopped in cell {cell.workdir.name}; run the same command to resume the sweep")
                break
        else:
            try:
                run_program(program, log=log)
            except Preempted as stopped:
                log(preemption.message(stopped.step, "each cell of the program") + " the sweep")
                break
    return cells


def main(argv=None) -> int:
    import sys

    from grpo_jax import build
    from grpo_jax import config as cfg_lib

    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(SWEEP_USAGE + "\n\nGrid keys vmapped inside one program: " + ", ".join(VMAPPED_KEYS))
        return 0
    from grpo_jax import platforms
    platforms.skip_absent_tpu()  # no libtpu (and its stderr noise) on a machine without a TPU
    try:
        argv = build.initialize_distributed(argv)
        cells = run_grid(argv)
    except cfg_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(f"RESULT cells={len(cells)} configurations={len({c.label for c in cells})}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
