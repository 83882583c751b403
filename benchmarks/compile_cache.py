"""The persistent compilation cache (`train.compilation_cache`): the second launch against the first.

    python -m benchmarks.compile_cache --config experiments/quickstart.py --config.sft.steps=0
    python -m benchmarks.compile_cache --config experiments/smollm2_addition.py \
        --config.train.prompts_per_step=4

Launches `python -m grpo_jax.train` twice into fresh workdirs (so both do the same work, not a
resume), with a fresh, empty cache directory for the pair, train.steps=2, evals and checkpoints off.
Per launch: the process's wall time, the first GRPO step's step_seconds (sampler + step compiles
happen there) and the second's (steady state), and the cache directory's entries after it. The
difference between the launches is the compile time the cache saves. Printed:

  RESULT first_wall_s=... second_wall_s=... first_step1_s=... second_step1_s=... step2_s=...
         entries=... saved_s=...
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


def launch(config: str, overrides: list, workdir: pathlib.Path, cache: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    argv = [sys.executable, "-m", "grpo_jax.train", "--config", config, "--workdir", str(workdir),
            f"--config.train.compilation_cache={cache}", "--config.train.steps=2", "--config.train.eval_every=0",
            "--config.train.checkpoint_every=0", "--config.train.samples_every=0", *overrides]
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r["step_seconds"] for r in rows if "step_seconds" in r}
    return {"wall": wall, "step1": steps[1], "step2": steps[2], "entries": len(os.listdir(cache))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    root = pathlib.Path(tempfile.mkdtemp(prefix="compile_cache_"))
    cache = root / "cache"
    first = launch(args.config, overrides, root / "first", cache)
    second = launch(args.config, overrides, root / "second", cache)
    for name, r in (("first", first), ("second", second)):
        print(f"{name}: wall {r['wall']:.1f} s, step 1 {r['step1']:.2f} s, step 2 {r['step2']:.2f} s, "
              f"cache entries {r['entries']}", file=sys.stderr)
    print(f"RESULT first_wall_s={first['wall']:.1f} second_wall_s={second['wall']:.1f} "
          f"first_step1_s={first['step1']:.2f} second_step1_s={second['step1']:.2f} "
          f"step2_s={second['step2']:.2f} entries={second['entries']} saved_s={first['wall'] - second['wall']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
