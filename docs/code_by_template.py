"""Held-out pass rate per template of the `code` task, before GRPO and at a run's evals.

    python docs/code_by_template.py experiments/smollm2_code.py runs/smollm2_code_s0 [runs/... ...]

Reads each run's eval_problems.jsonl (per-problem greedy correctness at every eval, in the held-out
order) and the held-out problems of the experiment (their template names): prints a markdown table,
one row per template, the base model's pass rate (step 0) and each run's at its last eval.
"""
import collections
import json
import pathlib
import sys

from grpo_jax import config as cfg_lib
from grpo_jax import tasks


def main(argv):
    config = cfg_lib.load_config(argv[0])
    names = [e.meta["name"] for e in tasks.from_config(config).eval_examples]
    runs = [pathlib.Path(a) for a in argv[1:]]
    columns, header = [], ["template", "problems"]
    for i, run in enumerate(runs):
        rows = [json.loads(line) for line in open(run / "eval_problems.jsonl", encoding="utf-8")]
        if i == 0:
            columns.append(rows[0]["correct"])
            header.append("base (step 0)")
        columns.append(rows[-1]["correct"])
        header.append(f"{run.name} step {rows[-1]['step']}")
    by = collections.defaultdict(list)
    for j, name in enumerate(names):
        by[name].append(j)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    order = sorted(by, key=lambda n: (-sum(columns[0][j] for j in by[n]) / len(by[n]), n))
    for name in order:
        cells = [f"{100 * sum(col[j] for j in by[name]) / len(by[name]):.0f} %" for col in columns]
        print(f"| `{name}` | {len(by[name])} | " + " | ".join(cells) + " |")
    total = [f"**{100 * sum(col) / len(col):.1f} %**" for col in columns]
    print(f"| all | {len(names)} | " + " | ".join(total) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
