"""The command-line surface as a new user meets it: --help, a mistyped --workdir, what evaluate says
and writes, reward metric names, no TPU runtime noise on a CPU machine, and the docs' claims.

The subprocess tests run the programs as a user would (`python -m ...`) with JAX_PLATFORMS unset and
one CPU device, so JAX picks its backends by itself; the others call `main` in-process.
"""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from grpo_jax import config as cfg_lib
from grpo_jax import evaluate
from grpo_jax import metrics as metrics_lib
from grpo_jax import platforms
from grpo_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.py")
# The quick start shrunk to seconds: d=32, 2 layers, 8 held-out problems, 32 new tokens (SFT targets: 26).
TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "task.eval_size=8", "train.eval_batch_size=8",
        "sampling.max_new_tokens=32"]


def flags(*overrides):
    return [f"--config.{o}" for o in overrides]


def run_program(*args, module=True, timeout=120):
    """`python -m args...` (or `python args...`) as a user runs it: JAX_PLATFORMS unset, one CPU
    device (none of conftest's test flags)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update(PYTHONPATH=str(REPO), XLA_FLAGS="")
    return subprocess.run([sys.executable, *(["-m"] if module else []), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tpu_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if "TPU" in line]


without_tpu = pytest.mark.skipif(
    platforms.may_have_tpu(), reason="a TPU machine: the TPU runtime is meant to start here")


# --- --help ---------------------------------------------------------------------------------------

@without_tpu
def test_evaluate_help_prints_usage_and_exits_0():
    # Before: a ConfigError traceback ("unknown argument '--help'") and exit 1.
    out = run_program("grpo_jax.evaluate", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m grpo_jax.evaluate --workdir")
    assert "--base_model" in out.stdout and "eval/step_N.json" in out.stdout
    assert "Traceback" not in out.stderr and tpu_lines(out.stderr) == []


@without_tpu
def test_train_help_lists_the_distributed_flags_and_prints_no_tpu_noise():
    out = run_program("grpo_jax.train", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--coordinator_address HOST:PORT", "--num_processes N", "--process_id I"):
        assert flag in out.stdout, flag
    assert "grpo.beta = 0.04" in out.stdout  # and the config keys, as before
    assert tpu_lines(out.stderr) == []


# --- no libtpu on a CPU machine ---------------------------------------------------------------------

@without_tpu
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None or not os.path.exists("/proc/self/maps"),
                    reason="needs libtpu installed and Linux's /proc/self/maps")
def test_a_cpu_command_that_starts_jax_loads_no_libtpu():
    # The config error comes from build.setup's device check, after JAX started its backends. Before
    # the fix JAX loaded libtpu.so there, which printed "could not determine TPU worker hostnames ..."
    # and "Failed to find host bounds ..." to stderr (unless another process held libtpu's lock file:
    # then it failed quietly, but was loaded all the same, which /proc/self/maps shows either way).
    code = ("import sys; from grpo_jax import train; rc = train.main(sys.argv[1:]); "
            "print('libtpu mapped:', 'libtpu' in open('/proc/self/maps').read()); sys.exit(rc)")
    out = run_program("-c", code, "--config", QUICKSTART, "--workdir", "unused",
                      *flags(*TINY, "mesh.data=2", "mesh.fsdp=1"), module=False)
    assert out.returncode == 2, out.stderr
    assert "mesh.data" in out.stderr and "Traceback" not in out.stderr
    assert "libtpu mapped: False" in out.stdout
    assert tpu_lines(out.stderr) == [], out.stderr
    assert not (REPO / "unused").exists()


def test_skip_absent_tpu_leaves_an_explicit_platform_choice_alone(monkeypatch):
    # conftest sets JAX_PLATFORMS=cpu: the user chose, so nothing is touched (on a TPU VM jax's own
    # import sets jax_platforms="tpu,cpu", which is left alone the same way).
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert platforms.skip_absent_tpu() is False
    from jax._src import xla_bridge
    assert xla_bridge._backend_factories["tpu"].factory is not platforms._declined


# --- evaluate: the workdir ------------------------------------------------------------------------

def test_evaluate_refuses_a_workdir_without_a_checkpoint(tmp_path, capsys):
    # Before: the mistyped workdir's "latest checkpoint" was none, so it scored the untrained model
    # and exited 0 with `RESULT step=0 ...`.
    typo = tmp_path / "runs" / "quickstrat"
    assert evaluate.main(["--config", QUICKSTART, "--workdir", str(typo), *flags(*TINY)]) == 2
    captured = capsys.readouterr()
    assert str(typo) in captured.err and "holds no checkpoint" in captured.err and "--base_model" in captured.err
    assert "RESULT" not in captured.out
    assert not typo.exists()  # nothing created at the mistyped path


def test_evaluate_without_config_needs_the_workdirs_config_json(tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path), "--base_model"]) == 2
    assert f"workdir {str(tmp_path)!r} has no config.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir as `train` leaves it: a short SFT warm start, then checkpoint 0 with its eval logged
    (train.steps=0: no GRPO step, so the fixture takes seconds)."""
    workdir = tmp_path_factory.mktemp("trained")
    train.run(["--config", QUICKSTART, "--workdir", str(workdir)] + flags(
        *TINY, "sft.steps=20", "sft.batch_size=16", "sft.learning_rate=1e-2", "sft.warmup_steps=0",
        "sft.stop_accuracy=0", "train.steps=0", "train.eval_every=1", "mesh.data=1", "mesh.fsdp=1"))
    return workdir


def result_line(out: str) -> dict:
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT "), out
    return dict(kv.split("=") for kv in last.split()[1:])


def test_evaluate_reads_the_workdirs_config_says_what_it_used_and_writes_its_results(trained, capsys):
    # No --config: the workdir's config.json (the tiny model, 8 held-out problems) is the config.
    assert evaluate.main(["--workdir", str(trained), "--config.mesh.data=1"]) == 0
    out = capsys.readouterr().out
    checkpoint = str(trained / "checkpoints" / "0")
    assert f"checkpoint step 0 at {checkpoint}" in out and str(trained / "config.json") in out
    assert "eval_accuracy greedy (temperature 0)" in out and "8 held-out problems" in out
    result = result_line(out)
    assert result["step"] == "0" and result["eval_examples"] == "8"
    record = json.loads((trained / "eval" / "step_0.json").read_text())
    assert record["step"] == 0 and record["checkpoint"] == checkpoint and record["base_model"] is False
    assert record["config_source"] == str(trained / "config.json") and record["overrides"] == ["mesh.data=1"]
    assert record["decoding"]["pass_k"] == 0 and record["decoding"]["max_new_tokens"] == 32
    assert record["ids"] == list(range(8)) and np.mean(record["correct"]) == pytest.approx(record["eval_accuracy"])
    assert float(result["eval_length"]) == pytest.approx(record["eval_length"], rel=1e-3)
    # The very numbers the training run logged for checkpoint 0 (same weights, same greedy decoding).
    logged = next(r for r in metrics_lib.read_metrics(trained) if "eval_accuracy" in r)
    assert record["eval_length"] == pytest.approx(logged["eval_length"], abs=1e-5)
    assert record["correct"] == metrics_lib.read_detail(trained, "eval_problems.jsonl")[0]["correct"]
    assert not [p for p in (trained / "eval").iterdir() if p.name != "step_0.json"]  # no temporaries left


def test_evaluate_with_config_takes_its_decoding_and_refuses_other_weights(trained, capsys):
    args = ["--config", QUICKSTART, "--workdir", str(trained)]
    same_model = flags(*TINY, "mesh.data=1", "train.pass_k=2", "sampling.temperature=0.5", "sampling.top_k=5")
    assert evaluate.main(args + same_model) == 0
    out = capsys.readouterr().out
    assert "from 2 samples per problem at temperature 0.5, top_k 5, top_p 1.0" in out
    result = result_line(out)
    assert 0.0 <= float(result["eval_maj@2"]) <= float(result["eval_pass@2"]) <= 1.0
    record = json.loads((trained / "eval" / "step_0.json").read_text())  # rewritten by this evaluation
    assert record["decoding"] == {"eval_accuracy": "greedy (temperature 0)", "pass_k": 2, "temperature": 0.5,
                                  "top_k": 5, "top_p": 1.0, "max_new_tokens": 32, "max_prompt_length": 16}
    assert record["config_source"] == QUICKSTART and "eval_pass@2" in record
    # Another architecture than the checkpoint's: refused before any model work, naming the keys.
    assert evaluate.main(args + flags(*TINY, "mesh.data=1", "model.num_layers=3", "model.hidden_size=64")) == 2
    err = capsys.readouterr().err
    assert "`model.hidden_size`, `model.num_layers`" in err and str(trained / "config.json") in err


def test_evaluate_base_model_scores_the_untrained_model_and_says_so(trained, capsys):
    assert evaluate.main(["--workdir", str(trained), "--base_model", "--config.mesh.data=1"]) == 0
    out = capsys.readouterr().out
    assert "base model (random init, train.seed=0)" in out
    result = result_line(out)
    assert "step" not in result and result["model"] == "base"
    record = json.loads((trained / "eval" / "base.json").read_text())
    assert record["base_model"] is True and record["step"] is None and record["checkpoint"] is None
    # The random init never ends a completion (32 of 32 tokens); checkpoint 0 (after SFT) does.
    assert record["eval_length"] == 32.0
    assert json.loads((trained / "eval" / "step_0.json").read_text())["eval_length"] < 32.0


# --- reward metric names ------------------------------------------------------------------------------

def test_two_rewards_with_one_function_name_are_refused_naming_both(tmp_path, capsys):
    def validate(weights):
        config = cfg_lib.Config()
        config.rewards.weights = weights
        return cfg_lib.validate(config)

    # Before: both wrote `reward_short` and one value was lost.
    with pytest.raises(cfg_lib.ConfigError, match=r"rewards\.weights\.a:short` and `rewards\.weights\.b\.c:short`"):
        validate({"correctness": 1.0, "a:short": 0.5, "b.c:short": 0.5})
    with pytest.raises(cfg_lib.ConfigError,
                       match=r"`rewards\.weights\.correctness` and `rewards\.weights\.mine:correctness`"):
        validate({"correctness": 1.0, "mine:correctness": 0.5})
    with pytest.raises(cfg_lib.ConfigError, match=r"rewards\.weights\.mine:mean`: its metric `reward_mean`"):
        validate({"correctness": 1.0, "mine:mean": 0.5})
    validate({"correctness": 1.0, "a:short": 0.5, "b:short": 0.0})  # a zero weight logs nothing: no clash
    validate({"correctness": 1.0, "a:short": 0.5, "b:long": 0.5})
    # From the command line: exit 2 before any model is built.
    argv = ["--config", QUICKSTART, "--workdir", str(tmp_path / "w"), *flags(
        "rewards.weights.custom_task_module:short_answer=0.5", "rewards.weights.other.module:short_answer=0.5")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "custom_task_module:short_answer" in err and "other.module:short_answer" in err
    assert not (tmp_path / "w").exists()


# --- the docs say what the code does ----------------------------------------------------------------

def test_readme_lists_every_supported_model_type():
    from grpo_jax.weights import SUPPORTED_MODEL_TYPES
    readme = (REPO / "README.md").read_text()
    sentence = re.search(r"`model_type` ([^)]*)\)", readme).group(1)
    for model_type in SUPPORTED_MODEL_TYPES:
        assert model_type in sentence, (model_type, sentence)


def test_quickstart_states_the_measured_sft_stop_everywhere():
    # Before: the comment said "typically ~550-600 steps" while the docstring and README said 200.
    source = (REPO / "experiments" / "quickstart.py").read_text()
    measured = int(re.search(r"SFT stops at step\s+(\d+)", source).group(1))
    assert re.search(rf"stopped at step {measured}, when validation accuracy", (REPO / "README.md").read_text())
    comments = " ".join(line.strip().lstrip("# ") for line in source.splitlines() if line.strip().startswith("#"))
    assert f"step {measured}" in comments
    for low, high in re.findall(r"(\d+)\s*-\s*(\d+) steps", comments):
        assert int(low) <= measured <= int(high), (low, high, measured)
