"""Config schema: defaults, overrides, validation errors that name the key, experiment loading."""

import json
import pathlib

import pytest

from grpo_jax import config as cfg
from grpo_jax.config import Config, ConfigError, apply_overrides, from_dict, load_config, to_dict, validate

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def test_defaults_follow_the_papers():
    c = validate(Config())
    assert (c.grpo.group_size, c.grpo.epsilon, c.grpo.beta) == (8, 0.2, 0.04)
    assert (c.grpo.loss_type, c.grpo.scale_rewards, c.grpo.epsilon_high) == ("grpo", "group", None)


def test_overrides_parse_types():
    c = apply_overrides(Config(), ["grpo.beta=0", "grpo.epsilon_high=0.28", "train.steps=7",
                                   "model.tie_embeddings=false", "grpo.loss_type=bnpo",
                                   "grpo.epsilon_high=None"])
    assert c.grpo.beta == 0.0 and isinstance(c.grpo.beta, float)
    assert c.train.steps == 7 and c.model.tie_embeddings is False
    assert c.grpo.loss_type == "bnpo" and c.grpo.epsilon_high is None
    assert Config().grpo.beta == 0.04  # overrides work on a copy


@pytest.mark.parametrize("override, match", [
    ("grpo.betta=0.1", r"unknown config key `grpo.betta`.*beta"),
    ("grpoo.beta=0.1", r"unknown config key `grpoo.beta`.*sections"),
    ("beta=0.1", r"section.key"),
    ("train.steps=ten", r"`train.steps` must be int"),
    ("model.tie_embeddings=maybe", r"`model.tie_embeddings` must be bool"),
    ("grpo.beta", r"section.key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize("override, match", [
    ("grpo.group_size=1", r"`grpo.group_size` = 1 .* >= 2"),
    ("grpo.epsilon=0", r"`grpo.epsilon` = 0.0 .* > 0"),
    ("grpo.epsilon=-0.1", r"`grpo.epsilon`"),
    ("grpo.beta=-0.01", r"`grpo.beta` = -0.01 .* >= 0"),
    ("grpo.loss_type=ppo", r"`grpo.loss_type` = 'ppo' .*'grpo', 'bnpo', 'dr_grpo'"),
    ("grpo.scale_rewards=std", r"`grpo.scale_rewards`.*'group', 'batch', 'none'"),
    ("grpo.importance_level=row", r"`grpo.importance_level`"),
    ("sampling.top_p=0", r"`sampling.top_p`"),
    ("task.name=gsm8k", r"`task.data_path`"),
    ("train.num_minibatches=3", r"`train.num_minibatches` = 3 .* 128"),
    ("model.num_kv_heads=3", r"`model.num_kv_heads`"),
    ("task.working=digits", r"`task.working` = 'digits' .*'equation', 'columns'"),
    # Configs that would silently learn nothing, or die mid-run, are refused up front.
    ("sampling.temperature=0", r"`sampling.temperature` = 0.0 .*every advantage is 0"),
    ("rewards.weights.correctness=0", r"`rewards.weights` = .*learns nothing"),
    ("model.param_dtype=float16", r"`model.param_dtype`"),
    ("train.steps_per_generation=3", r"`train.steps_per_generation` = 3 .* 128"),
    ("grpo.dynamic_sampling_factor=0.5", r"`grpo.dynamic_sampling_factor`"),
])
def test_invalid_values_name_key_and_allowed(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(apply_overrides(Config(), [override]))


def test_mesh_validation():
    c = Config()
    assert cfg.mesh_shape(c, 8) == (8, 1)
    c.mesh.data, c.mesh.fsdp = 4, 2
    validate(c, num_devices=8)
    with pytest.raises(ConfigError, match=r"`mesh.data` x `mesh.fsdp` = 4 x 2 .* \(4\)"):
        validate(c, num_devices=4)
    c.mesh.data, c.mesh.fsdp = 2, 1
    assert cfg.mesh_shape(c, 8) == (2, 1)  # a mesh may use the first devices only
    c.mesh.data, c.mesh.fsdp = 1, -1
    assert cfg.mesh_shape(c, 8) == (1, 8)
    # 16 prompts x G = 8 = 128 rows: not divisible by 3 devices.
    c.mesh.data, c.mesh.fsdp = 3, 1
    with pytest.raises(ConfigError, match=r"`train.prompts_per_step`.*divisible by the mesh's 3 devices"):
        validate(c, num_devices=3)


def test_wrong_type_in_module_is_caught():
    c = Config()
    c.grpo.group_size = 8.0  # a float where an int belongs
    with pytest.raises(ConfigError, match=r"`grpo.group_size` must be int"):
        validate(c)
    c = Config()
    c.train.steps = True
    with pytest.raises(ConfigError, match=r"`train.steps` must be an int, got bool"):
        validate(c)
    with pytest.raises(AttributeError):
        Config().grpo.betta = 0.1  # slotted dataclasses: a misspelt field fails at once


def test_json_round_trip():
    c = apply_overrides(Config(), ["grpo.epsilon_high=0.28", "model.path=x"])
    again = from_dict(json.loads(json.dumps(to_dict(c))))
    assert again == c
    assert cfg.config_hash(again) == cfg.config_hash(c)
    with pytest.raises(ConfigError, match="unknown config key `grpo.foo`"):
        from_dict({"grpo": {"foo": 1}})


def test_experiment_modules_load_and_validate():
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.py") if p.stem != "__init__")
    assert {"base", "deepseekmath", "r1", "dapo", "dr_grpo", "gspo"} <= set(names)
    for name in names:
        overrides = ["task.data_path=unused"] if name.startswith(("gsm8k", "smollm2")) else []
        load_config(EXPERIMENTS / f"{name}.py", overrides)


def test_command_line(tmp_path):
    c, workdir = cfg.parse_command_line(["--config", str(EXPERIMENTS / "dapo.py"), "--workdir", "w",
                                         "--config.grpo.beta=0.01", "--config.train.steps", "3"])
    assert (workdir, c.grpo.beta, c.train.steps, c.grpo.epsilon_high) == ("w", 0.01, 3, 0.28)
    with pytest.raises(ConfigError, match="no such experiment file"):
        cfg.parse_command_line(["--config", str(tmp_path / "nope.py"), "--workdir", "w"])
    with pytest.raises(ConfigError, match="usage"):
        cfg.parse_command_line(["--config", str(EXPERIMENTS / "base.py")])
    with pytest.raises(ConfigError, match="unknown argument"):
        cfg.parse_command_line(["--cfg", "x"])
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {}\n")
    with pytest.raises(ConfigError, match="must return grpo_jax.config.Config"):
        cfg.parse_command_line(["--config", str(bad), "--workdir", "w"])


def test_more_refusals_that_need_two_keys():
    c = apply_overrides(Config(), ["task.name=math500", "task.data_path=somewhere"])
    with pytest.raises(ConfigError, match=r"`task.train_data_path`.*MATH-500 is the eval set"):
        validate(c)
    c = apply_overrides(Config(), ["rewards.weights.overlong=1.0", "rewards.overlong_cache=100", "sampling.max_new_tokens=64"])
    with pytest.raises(ConfigError, match=r"`rewards.overlong_cache` = 100 .*max_new_tokens = 64"):
        validate(c)
    c = apply_overrides(Config(), ["train.steps_per_generation=4", "train.num_minibatches=3"])
    with pytest.raises(ConfigError, match=r"`train.num_minibatches` = 3 .* 32"):
        validate(c)
    # Eval-only configs (train.steps=0) may be greedy.
    validate(apply_overrides(Config(), ["sampling.temperature=0", "train.steps=0"]))


def test_sft_learning_rate_default_suits_a_pretrained_model():
    assert Config().sft.learning_rate <= 2e-5


def test_help_lists_every_key_with_default_and_allowed_values(capsys):
    import dataclasses

    from grpo_jax import train

    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    config = Config()
    for section in dataclasses.fields(config):
        for field in dataclasses.fields(getattr(config, section.name)):
            assert f"  {section.name}.{field.name} = " in out, field.name
    assert 'grpo.loss_type = "grpo"  (str)  one of: grpo, bnpo, dr_grpo' in out
    assert 'rewards.weights = {"correctness": 1.0}' in out
    assert "train.steps_per_generation = 1  (int)" in out


def test_mapping_overrides():
    c = apply_overrides(Config(), ["rewards.weights.format=0.1", "rewards.weights.my.mod:fn=2"])
    assert c.rewards.weights == {"correctness": 1.0, "format": 0.1, "my.mod:fn": 2.0}
    c = apply_overrides(Config(), ['rewards.weights={"format": 1}'])
    assert c.rewards.weights == {"format": 1.0}
    with pytest.raises(ConfigError, match=r"`rewards.weights.format` must be a number"):
        validate(cfg_from({"rewards": {"weights": {"format": "high"}}}))
    with pytest.raises(ConfigError, match=r"`grpo.beta.x`: `grpo.beta` is not a mapping"):
        apply_overrides(Config(), ["grpo.beta.x=1"])


def cfg_from(d):
    from grpo_jax.config import from_dict
    return from_dict(d)


def test_dynamic_sampling_rounds_must_shard_over_the_mesh():
    c = apply_overrides(Config(), ["grpo.dynamic_sampling=true", "grpo.dynamic_sampling_factor=1.5",
                                   "train.prompts_per_step=2", "grpo.group_size=4", "mesh.data=8"])
    with pytest.raises(ConfigError, match=r"`grpo.dynamic_sampling_factor` = 1.5 .*3 \* 4 is divisible by the mesh's 8"):
        validate(c, num_devices=8)
    validate(apply_overrides(c, ["grpo.dynamic_sampling_factor=2.0"]), num_devices=8)


def test_distributed_flags_are_checked(monkeypatch):
    from grpo_jax import train

    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match=r"--num_processes \(or JAX_NUM_PROCESSES\) must be an integer, got 'two'"):
        train.initialize_distributed(["--config", "x.py"])


def test_bf16_master_weights_are_refused_for_training_unless_asked_for():
    # Adam at lr 1e-6 on bf16 weights of scale 0.02 loses ~98 % of its updates: a run that would
    # silently learn almost nothing. Inference-only configs and an explicit override still pass.
    with pytest.raises(ConfigError, match="model.param_dtype"):
        validate(apply_overrides(Config(), ["model.param_dtype=bfloat16"]))
    with pytest.raises(ConfigError, match="model.param_dtype"):
        validate(apply_overrides(Config(), ["model.param_dtype=bfloat16", "train.steps=0", "sft.steps=5"]))
    validate(apply_overrides(Config(), ["model.param_dtype=bfloat16", "train.steps=0"]))
    validate(apply_overrides(Config(), ["model.param_dtype=bfloat16", "model.allow_bf16_params=true"]))


def test_prompt_plus_completion_longer_than_the_model_is_refused(tmp_path):
    # A random-init model: its model section. A checkpoint: its config.json, read before any weight
    # (this directory has no weights at all, and the error is still the length one).
    import string

    from grpo_jax import build
    from grpo_jax import tokenizer as tok_lib

    model = tmp_path / "model"
    tok_lib.char_tokenizer(string.digits + string.ascii_letters + " ?+").save_pretrained(model)
    (model / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 96,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}))
    c = apply_overrides(Config(), [f"model.path={model}", "mesh.data=1", "train.eval_batch_size=8",
                                   "sampling.max_prompt_length=64", "sampling.max_new_tokens=64"])
    with pytest.raises(ConfigError, match=r"max_prompt_length.*max_new_tokens.*128 exceed the model's 96 positions"):
        build.setup(c, tmp_path / "run")
    lengths = ["mesh.data=1", "train.eval_batch_size=8", "sampling.max_prompt_length=64", "sampling.max_new_tokens=64"]
    with pytest.raises(ConfigError, match=r"128 exceed the model's 100 positions \(model.max_position_embeddings\)"):
        build.setup(apply_overrides(Config(), ["model.max_position_embeddings=100", *lengths]), tmp_path / "run")
    from grpo_jax.model import ModelConfig

    fits = ModelConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
                       intermediate_size=8, max_position_embeddings=128)
    build.check_context_length(apply_overrides(Config(), lengths), fits)  # 64 + 64 = 128: fits exactly


def test_every_command_line_reads_config_overrides_the_same_way():
    """`--config.k=v` and `--config.k v` in train's, evaluate's, plan's and the sweep's parsers (one
    helper, `config.override_item`); a trailing `--config.k` without a value is an error naming it."""
    from grpo_jax import evaluate, plan

    base = str(EXPERIMENTS / "base.py")
    c, _ = cfg.parse_command_line(["--config", base, "--workdir", "w", "--config.grpo.beta", "0.5",
                                   "--config.grpo.epsilon=0.1"])
    assert (c.grpo.beta, c.grpo.epsilon) == (0.5, 0.1)
    assert evaluate.parse_args(["--workdir", "w", "--config.grpo.beta", "0.5", "--config.grpo.epsilon=0.1"])[3] == \
        ["grpo.beta=0.5", "grpo.epsilon=0.1"]
    c, *_ = plan.parse_args(["--config", base, "--topology", "cpu", "--config.grpo.beta", "0.5"])
    assert c.grpo.beta == 0.5
    rest = ["7", "--x"]
    assert cfg.override_item("--config.train.steps", rest) == "train.steps=7" and rest == ["--x"]
    for parse in (lambda a: cfg.parse_command_line(["--config", base, "--workdir", "w", *a]),
                  lambda a: evaluate.parse_args(["--workdir", "w", *a]),
                  lambda a: plan.parse_args(["--config", base, "--topology", "cpu", *a])):
        with pytest.raises(ConfigError, match=r"--config\.grpo\.beta needs a value"):
            parse(["--config.grpo.beta"])
