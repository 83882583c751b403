"""C sweep cells as ONE vmapped program against the same C runs one after another (issue 24).

    python -m benchmarks.sweep_cells --config experiments/quickstart.py --grid grpo.beta=0,0.04 \
        --grid grpo.epsilon_high=0.2,0.28 --seeds 2 --steps 4 --config.sft.steps=0
    python -m benchmarks.sweep_cells --config experiments/smollm2_addition.py --grid grpo.beta=0,0.04 \
        --seeds 2 --steps 3 --config.train.prompts_per_step=4

Both sides are the real programs: `grpo_jax.sweep.run_program` on all the cells, then `grpo_jax.train`
on each cell in turn, in fresh workdirs, with train.eval_every=0 (the evals are per cell on both
sides and would only add the same time to each). Per side: the wall time of the whole thing
(compiles, set-up and model loading included) and the median steady-state step (the step_seconds of
steps 2.. in metrics.jsonl: a program step serves all C cells, a run's step one). Printed:

  RESULT cells=C program_wall_s=... sequential_wall_s=... wall_ratio=... program_step_s=...
         sequential_step_s=... (the sum over cells of each run's median step) step_ratio=...
"""
import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import jax


def main(argv=None) -> int:
    from grpo_jax import metrics as metrics_lib
    from grpo_jax import sweep, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--grid", action="append", default=[])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    parser.add_argument("--skip_sequential", action="store_true")
    args, rest = parser.parse_known_args(argv)
    overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
    overrides += [f"train.steps={args.steps}", "train.eval_every=0", "train.samples_every=0",
                  "train.checkpoint_every=0"]
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="sweep_cells_"))
    cells = sweep.expand_grid(args.config, overrides, sweep.parse_grid(args.grid), args.seeds, root / "program",
                              num_devices=jax.device_count(), platform=jax.default_backend())
    programs = sweep.plan_programs(cells)
    if len(programs) != 1:
        raise SystemExit(f"the grid needs {len(programs)} programs; give one that vmaps into one")

    def steady(workdir):
        seconds = [r["step_seconds"] for r in metrics_lib.read_metrics(workdir) if "step_seconds" in r]
        return statistics.median(seconds[1:] or seconds)

    t0 = time.perf_counter()
    sweep.run_program(cells, log=lambda m: print(m, file=sys.stderr, flush=True))
    program_wall = time.perf_counter() - t0
    program_step = steady(cells[0].workdir)

    if args.skip_sequential:
        print(f"RESULT cells={len(cells)} program_wall_s={program_wall:.1f} program_step_s={program_step:.2f}")
        return 0
    t0 = time.perf_counter()
    sequential_step = 0.0
    for cell in cells:
        workdir = root / "sequential" / cell.workdir.name
        train.run(["--config", args.config, "--workdir", str(workdir)] + [f"--config.{o}" for o in cell.overrides])
        sequential_step += steady(workdir)
    sequential_wall = time.perf_counter() - t0
    print(f"RESULT cells={len(cells)} program_wall_s={program_wall:.1f} sequential_wall_s={sequential_wall:.1f} "
          f"wall_ratio={sequential_wall / program_wall:.2f} program_step_s={program_step:.2f} "
          f"sequential_step_s={sequential_step:.2f} step_ratio={sequential_step / program_step:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
