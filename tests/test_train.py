"""The training program: exact resume, sharded == single device, crash safety, errors before work.

All runs use one tiny configuration (the quick start shrunk: d=32, 2 layers, 4 prompts x G=4,
24 new tokens) with a short SFT warm start, so rewards and advantages are non-trivial.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from grpo_jax import config as cfg_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.py")
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
    "model.head_dim=16", "model.intermediate_size=64", "sft.steps=30", "sft.batch_size=16",
    "sft.learning_rate=1e-2", "sft.warmup_steps=0", "train.steps=6", "train.prompts_per_step=4",
    "grpo.group_size=4", "task.eval_size=16", "train.eval_batch_size=16", "train.eval_every=3",
    "train.checkpoint_every=3", "optim.learning_rate=1e-3",
    "train.samples_every=3", "rewards.weights.format=1.0", "sft.eval_every=15", "sft.validation_size=16",  # format credit varies early on: real advantages
]
TIMING = ("sample_seconds", "reward_seconds", "update_seconds", "step_seconds")


def argv(workdir, *extra):
    return ["--config", QUICKSTART, "--workdir", str(workdir)] + [f"--config.{o}" for o in TINY + list(extra)]


def rows_without_timing(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("sft_")}
            for r in metrics_lib.read_metrics(workdir)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 steps in one go on a 1-device mesh: the reference run."""
    workdir = tmp_path_factory.mktemp("straight")
    train.run(argv(workdir, "mesh.data=1", "mesh.fsdp=1"))
    return workdir


def test_straight_run_writes_the_workdir_contract(straight):
    rows = metrics_lib.read_metrics(straight)
    steps = [r["step"] for r in rows if not any(k.startswith("sft_") for k in r)]
    assert steps == [0, 1, 2, 3, 4, 5, 6]
    for r in rows:
        if r["step"] >= 1:
            for key in ("reward_mean", "loss", "kl", "clip_fraction", "completion_length",
                        "step_seconds", "grad_norm", "entropy"):
                assert key in r, key
    assert {r["step"] for r in rows if "eval_accuracy" in r} == {0, 3, 6}
    assert any(r["reward_mean"] > 0 for r in rows if r["step"] >= 1), "SFT warm start should give some reward"
    assert any(r.get("advantage_abs_mean", 0) > 0 for r in rows)
    # SFT checked its validation accuracy (quick start: stop at 0.2) at step 15 and ran on.
    assert [r["sft_step"] for r in rows if "sft_validation_accuracy" in r] == [15]
    samples = metrics_lib.read_metrics(straight, kind="samples")
    assert [s["step"] for s in samples] == [3, 6]
    # Each held-out problem's score at every eval, and per-group statistics of every logged step.
    evals = metrics_lib.read_detail(straight, "eval_problems.jsonl")
    accuracy = {r["step"]: r["eval_accuracy"] for r in rows if "eval_accuracy" in r}
    assert [e["step"] for e in evals] == [0, 3, 6]
    for e in evals:
        assert e["ids"] == list(range(16)) and np.mean(e["correct"]) == pytest.approx(accuracy[e["step"]])
    groups = metrics_lib.read_detail(straight, "groups.jsonl")
    assert [g["step"] for g in groups] == [1, 2, 3, 4, 5, 6]
    by_step = {r["step"]: r for r in rows}
    for g in groups:
        assert len(g["reward_mean"]) == len(g["reward_std"]) == 4
        assert g["clip_fraction"] == [0.0] * 4  # mu = 1: every ratio is exactly 1
        assert np.mean(g["reward_mean"]) == pytest.approx(by_step[g["step"]]["reward_mean"], abs=1e-6)
        assert np.mean(np.asarray(g["reward_std"]) == 0) == pytest.approx(
            by_step[g["step"]]["reward_zero_std_fraction"])
    config = cfg_lib.from_dict(json.loads((straight / "config.json").read_text()))
    assert config.train.steps == 6 and config.model.hidden_size == 32
    assert sorted(p.name for p in (straight / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "3", "6"]
    assert any((straight / "tb").iterdir())


def test_resume_is_exact(straight, tmp_path):
    # 3 steps, "crash", resume to 6: identical metric rows (bitwise, timing columns aside).
    train.run(argv(tmp_path, "mesh.data=1", "mesh.fsdp=1"), stop_after=3)
    assert [r["step"] for r in rows_without_timing(tmp_path)][-1] == 3
    train.run(argv(tmp_path, "mesh.data=1", "mesh.fsdp=1"))
    assert rows_without_timing(tmp_path) == rows_without_timing(straight)
    for name in metrics_lib.DETAIL_FILES:  # repaired on resume like metrics.jsonl
        assert metrics_lib.read_detail(tmp_path, name) == metrics_lib.read_detail(straight, name)


def test_sharded_4x2_matches_single_device(straight, tmp_path):
    train.run(argv(tmp_path, "mesh.data=4", "mesh.fsdp=2", "train.steps=1", "train.eval_every=0"))
    one = next(r for r in rows_without_timing(straight) if r["step"] == 1)
    eight = next(r for r in rows_without_timing(tmp_path) if r["step"] == 1)
    for key in ("reward_mean", "loss", "kl", "clip_fraction", "entropy", "grad_norm", "completion_length"):
        assert eight[key] == pytest.approx(one[key], abs=1e-4), key


_KILLED_CHILD = textwrap.dedent("""
    import os, signal, sys
    from orbax.checkpoint._src.serialization import serialization
    from grpo_jax import train

    original = serialization.async_serialize_from_host
    calls = {"n": 0}
    async def write(*args, **kwargs):
        await original(*args, **kwargs)
        calls["n"] += 1
        if os.path.exists(os.path.join(sys.argv[1], "checkpoints", "3")):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-way through writing the step-6 checkpoint
    serialization.async_serialize_from_host = write
    train.run(["--config", sys.argv[2], "--workdir", sys.argv[1]] + sys.argv[3:])
    print("SURVIVED", flush=True)
""")


@pytest.mark.slow
def test_sigkill_mid_checkpoint_resumes_from_last_complete_one(straight, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_KILLED_CHILD)
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    args = [f"--config.{o}" for o in TINY] + ["--config.mesh.data=1", "--config.mesh.fsdp=1"]
    proc = subprocess.run([sys.executable, str(script), str(workdir), QUICKSTART, *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    assert "SURVIVED" not in proc.stdout
    # Step 3 is committed; step 6 was cut mid-write, so only its tmp dir exists.
    names = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert "3" in names and "6" not in names, names
    train.run(argv(workdir, "mesh.data=1", "mesh.fsdp=1"))
    assert rows_without_timing(workdir) == rows_without_timing(straight)


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    # A learning rate of 1e30 blows the params up: the run must stop, naming the last checkpoint,
    # and never write a checkpoint of the broken state.
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* last good checkpoint is step \d"):
        train.run(argv(tmp_path, "mesh.data=1", "mesh.fsdp=1", "optim.learning_rate=1e30",
                       "optim.max_grad_norm=0", "train.checkpoint_every=1", "train.steps=6",
                       "sft.steps=0", "grpo.beta=0.04"))
    from grpo_jax.checkpoint import Checkpointer
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        last = ckpt.latest_step()
    rows = metrics_lib.read_metrics(tmp_path)
    assert all(r["step"] <= last or r["step"] == last + 1 for r in rows)


def test_checkpoint_saves_are_asynchronous_and_committed_when_the_loop_raises(tmp_path, monkeypatch):
    """The loop's saves write in the background (the next step does not wait for the disk), and a loop
    that raises still commits the save in flight. Each array write is slowed down and the step after
    the first save raises: the save must not have been committed when the loop went on, and must be
    by the time run() has raised."""
    import asyncio

    from orbax.checkpoint._src.serialization import serialization

    from grpo_jax import rollout
    from grpo_jax.checkpoint import Checkpointer

    original = serialization.async_serialize_from_host
    seen = {}

    async def slow_write(*args, **kwargs):
        await asyncio.sleep(0.5)
        return await original(*args, **kwargs)

    collect = rollout.collect

    def collect_then_fail(s, params, step, key):
        if step == 1:  # the step after the first save: the loop went on while the save is written
            # Committed steps are directories named by the step (in flight: "<step>.orbax-checkpoint-tmp");
            # a second Checkpointer here would clean the in-flight save's temporary directory away.
            seen["committed while the loop ran"] = sorted(
                int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
            raise RuntimeError("verifier crashed")
        return collect(s, params, step, key)

    monkeypatch.setattr(serialization, "async_serialize_from_host", slow_write)
    monkeypatch.setattr(rollout, "collect", collect_then_fail)
    with pytest.raises(RuntimeError, match="verifier crashed"):
        train.run(argv(tmp_path, "mesh.data=1", "mesh.fsdp=1", "train.checkpoint_every=1", "train.steps=4",
                       "sft.steps=0", "train.eval_every=0"))
    assert 1 not in seen["committed while the loop ran"]  # step 1 was still being written
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 1


@pytest.mark.parametrize("extra, match", [
    (["grpo.betta=0.1"], r"unknown config key `grpo.betta`"),
    (["grpo.group_size=1"], r"`grpo.group_size` = 1"),
    (["model.path=/nonexistent/model"], r"`model.path`: '/nonexistent/model' does not exist"),
    (["task.name=gsm8k", "task.data_path=/nonexistent/gsm8k"], r"`task.data_path`"),
    (["mesh.data=3"], r"divisible by the mesh's 3 devices"),
])
def test_bad_input_fails_before_any_work(tmp_path, extra, match):
    with pytest.raises(cfg_lib.ConfigError, match=match):
        train.run(argv(tmp_path / "w", *extra))
    assert not (tmp_path / "w").exists()  # nothing written


def test_workdir_of_another_experiment_is_refused(straight):
    with pytest.raises(cfg_lib.ConfigError, match=r"different config \(keys grpo.beta\)"):
        train.run(argv(straight, "mesh.data=1", "mesh.fsdp=1", "grpo.beta=0.0"))


def test_main_reports_config_errors(tmp_path, capsys):
    assert train.main(argv(tmp_path, "grpo.loss_type=ppo")) == 2
    assert "grpo.loss_type" in capsys.readouterr().err


def test_evaluate_cli_reproduces_the_runs_last_eval(straight, capsys):
    # `python -m grpo_jax.evaluate` restores the last checkpoint (step 6): its greedy accuracy must
    # equal the eval the training run logged at step 6 with the same params.
    from grpo_jax import evaluate
    assert evaluate.main(argv(straight, "mesh.data=1", "mesh.fsdp=1", "train.pass_k=2")) == 0
    out = capsys.readouterr().out
    result = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split()[1:])
    logged = next(r for r in metrics_lib.read_metrics(straight) if r["step"] == 6 and "eval_accuracy" in r)
    assert int(result["step"]) == 6
    assert float(result["eval_accuracy"]) == pytest.approx(logged["eval_accuracy"], abs=1e-4)
    assert 0.0 <= float(result["eval_maj@2"]) <= float(result["eval_pass@2"]) <= 1.0


def test_majority_and_pass_at_k_hand_checked():
    from grpo_jax import rewards
    from grpo_jax.evaluate import majority_correct
    score = lambda c, gold: rewards.correctness(c, gold)  # noqa: E731
    ans = lambda a: f"<reasoning>x</reasoning><answer>{a}</answer>"  # noqa: E731
    # Two votes for 5 beat one for 7: correct iff gold is 5.
    assert majority_correct([ans(7), ans(5), ans(5)], "5", style="reasoning", score=score) == 1.0
    assert majority_correct([ans(7), ans(5), ans(5)], "7", style="reasoning", score=score) == 0.0
    # A tie goes to the answer seen first; unparseable completions never vote.
    assert majority_correct([ans(7), ans(5)], "7", style="reasoning", score=score) == 1.0
    assert majority_correct(["garbage", "5 or 6", ans(4)], "4", style="reasoning", score=score) == 1.0
    assert majority_correct(["garbage"], "4", style="reasoning", score=score) == 0.0


def test_evaluate_reports_format_rate_and_length_of_the_greedy_completions(monkeypatch):
    # Hand-checked: four greedy completions of "final"-style answers to golds 5, 7, 9, 11.
    from grpo_jax import evaluate, rewards, tasks
    from grpo_jax import tokenizer as tok_lib

    completions = ["2+3=5", "it is 7 I think", "8", "the sum is 11."]
    # correct: 5 yes, 7 yes (the last number), 8 != 9, 11 yes -> 3/4; format (ends on the number):
    # yes, no ("I think" after it), yes, yes -> 3/4; length in characters = tokens here: 5+15+1+14
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: list(completions))
    examples = [tasks.Example(prompt=f"q{i}", answer=str(g), meta={}) for i, g in enumerate([5, 7, 9, 11])]
    task = tasks.Task("final", None, examples, [], lambda e: e.prompt,
                      lambda c, e: rewards.correctness(c, e.answer, style="final"))
    tok = tok_lib.char_tokenizer("0123456789+=. abcdefghijklmnopqrstuvwxyzI")
    out = evaluate.evaluate(None, None, tok, task, key=None, batch_size=4, max_prompt_length=8,
                            max_new_tokens=16, put=None, eos_ids=2)
    assert out == {"eval_accuracy": 0.75, "eval_examples": 4, "eval_length": 35 / 4, "eval_format": 0.75}
    # a task of a user's own style: no format rate (format_reward knows only the built-in styles)
    out = evaluate.evaluate(None, None, tok, task._replace(style="mine"), key=None, batch_size=4,
                            max_prompt_length=8, max_new_tokens=16, put=None, eos_ids=2)
    assert "eval_format" not in out and out["eval_accuracy"] == 0.75


def test_evals_and_samples_run_on_the_steps_asked_and_pass_k_samples_like_training(tmp_path, monkeypatch):
    # Before: evals and samples ran only on logged steps (log_every=4, eval_every=3 evaluated at 0
    # and 6, never at 3), and the pass@k samples were drawn without the config's top-k / top-p.
    import math

    from grpo_jax import sampling

    calls, original = [], sampling.sample

    def spy(*args, **kwargs):
        calls.append((float(kwargs.get("temperature", 1.0)), kwargs.get("top_k", 0), kwargs.get("top_p", 1.0)))
        return original(*args, **kwargs)

    monkeypatch.setattr(sampling, "sample", spy)
    train.run(argv(tmp_path, "mesh.data=1", "mesh.fsdp=1", "sft.steps=0", "train.log_every=4",
                   "train.eval_every=3", "train.checkpoint_every=0", "train.samples_every=5", "train.pass_k=2",
                   "sampling.top_k=3", "sampling.top_p=0.9", "optim.schedule=cosine"))
    rows = metrics_lib.read_metrics(tmp_path)
    assert {r["step"] for r in rows if "eval_accuracy" in r} == {0, 3, 6}
    assert {r["step"] for r in rows if "eval_pass@2" in r} == {0, 3, 6}
    assert [s["step"] for s in metrics_lib.read_metrics(tmp_path, kind="samples")] == [5]
    sampled = [c for c in calls if c[0] > 0]  # training rollouts and pass@k samples; greedy aside
    assert len(sampled) > 6 and all(c[1:] == (3, 0.9) for c in sampled), sampled
    # The learning rate each logged step trained at: cosine over 6 updates, no warmup (hand formula).
    lr = {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}
    assert lr == pytest.approx({s: 1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 6)) for s in (3, 4, 5, 6)})


def test_resume_keeps_the_first_launchs_learning_rate_schedule(tmp_path):
    # train.steps may change on resume, but it used to set the cosine horizon too: the learning
    # rate jumped (here from 5e-4 to 2.5e-4 at step 3). The first launch's horizon now holds, and
    # steps past its end (learning rate 0: nothing learnt) are refused before any work.
    args = ("mesh.data=1", "mesh.fsdp=1", "sft.steps=0", "optim.schedule=cosine", "train.eval_every=0",
            "train.checkpoint_every=2", "train.samples_every=0")
    train.run(argv(tmp_path, *args, "train.steps=4"), stop_after=2)
    rows = train.run(argv(tmp_path, *args, "train.steps=3"))
    assert [r["step"] for r in rows] == [3]
    assert rows[0]["learning_rate"] == pytest.approx(1e-3 * 0.5)  # step 3 of the 4-step cosine
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["schedule_steps"] == 4
    with pytest.raises(cfg_lib.ConfigError, match="train.steps"):
        train.run(argv(tmp_path, *args, "train.steps=8"))
