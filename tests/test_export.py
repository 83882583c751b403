"""`python -m grpo_jax.export`: a run's checkpoint -> a directory transformers and peft load.

Two 1-step runs on the tiny Qwen2 checkpoint of test_presets.py (a character tokenizer with ChatML
turns; generation_config.json lists `<|im_end|>` and `<eos>`): a full fine-tune and a LoRA run, each
rewarded for an even completion length (a random model earns it about half the time, so every group
has advantages and one step moves the weights). Each is exported through the command line and loaded
by transformers: its logits equal `model.apply` of the policy evaluate restores from the checkpoint, in
f32, and differ from the base model's (an export of the untrained weights fails). A quick-start run
(no model.path: the built-in character tokenizer) is exported at its step-0 checkpoint.
"""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from grpo_jax import build  # noqa: E402
from grpo_jax import config as cfg_lib  # noqa: E402
from grpo_jax import export  # noqa: E402
from grpo_jax import model as model_lib  # noqa: E402
from grpo_jax import tokenizer as tok_lib  # noqa: E402
from grpo_jax import train  # noqa: E402

from test_presets import tiny_chat_model  # noqa: E402,F401  (a module-scoped fixture)
from test_train import QUICKSTART  # noqa: E402

# Left-padded: row 1 has two pads. Ids below the tiny tokenizer's 106 tokens.
TOKENS = np.array([[5, 17, 40, 3, 64, 9, 2, 30], [0, 0, 88, 7, 7, 31, 2, 100]], np.int32)
MASK = np.array([[1] * 8, [0, 0] + [1] * 6], np.int32)
REAL = MASK.astype(bool)
TEXT = "What is 47+39?<reasoning>7+9=16\n4+3+1=8</reasoning> <answer>86</answer>"


def even_length(completion: str, example) -> float:
    """The runs' reward: 1 for a completion of even length (about half of a random model's)."""
    return float(len(completion) % 2 == 0)


def _train(workdir, *extra):
    overrides = ["sft.steps=0", "train.steps=1", "train.prompts_per_step=2", "grpo.group_size=4",
                 "sampling.max_new_tokens=12", "train.eval_every=0", "train.samples_every=0",
                 "train.checkpoint_every=1", "task.eval_size=4", "optim.learning_rate=1e-2", "mesh.data=1",
                 "mesh.fsdp=1", 'rewards.weights={"test_export:even_length": 1.0}', *extra]
    train.run(["--config", QUICKSTART, "--workdir", str(workdir)] + [f"--config.{o}" for o in overrides])
    return workdir


@pytest.fixture(scope="module")
def full_run(tiny_chat_model, tmp_path_factory):  # noqa: F811
    model_dir, _ = tiny_chat_model
    return _train(tmp_path_factory.mktemp("full"), f"model.path={model_dir}")


@pytest.fixture(scope="module")
def lora_run(tiny_chat_model, tmp_path_factory):  # noqa: F811
    model_dir, _ = tiny_chat_model
    return _train(tmp_path_factory.mktemp("lora"), f"model.path={model_dir}", "model.lora_rank=4",
                  "model.lora_alpha=8.0", "model.lora_targets=q,v,down")


def _policy_logits(workdir) -> np.ndarray:
    """The trained policy's logits as evaluate restores it (latest checkpoint; LoRA: base + adapters)."""
    config = cfg_lib.from_dict(json.loads((workdir / "config.json").read_text()))
    s = build.setup(config, workdir, for_eval=True)
    assert s.step == 1
    return np.asarray(model_lib.apply(s.model_config, s.params, jnp.asarray(TOKENS), attention_mask=jnp.asarray(MASK)))


def _check_auto_tokenizer(result, out, reference):
    """The RESULT's auto_tokenizer says whether AutoTokenizer encodes as the run's tokenizer; where it
    does not (transformers 5 builds a Qwen2Tokenizer for a plain tokenizer.json in a model_type qwen2
    directory, as here) a note names the loaders that do."""
    auto = transformers.AutoTokenizer.from_pretrained(out)
    same = auto(TEXT)["input_ids"] == reference(TEXT)["input_ids"]
    assert result["auto_tokenizer"] == ("same" if same else "differs")
    assert same or "PreTrainedTokenizerFast.from_pretrained" in result["stderr"]


def _hf_logits(m) -> np.ndarray:
    with torch.no_grad():
        return m(input_ids=torch.tensor(TOKENS, dtype=torch.long),
                 attention_mask=torch.tensor(MASK)).logits.float().numpy()


def _load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def _run(capsys, *args) -> dict:
    """export.main(args) -> its RESULT fields, and "stderr" (exit status 0 asserted)."""
    capsys.readouterr()
    rc = export.main([str(a) for a in args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    last = out.out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    return dict(kv.split("=", 1) for kv in last.split()[1:]) | {"stderr": out.err}


def _error(capsys, *args) -> str:
    capsys.readouterr()
    rc = export.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, err
    return err


def test_full_export_is_the_trained_policy(full_run, tiny_chat_model, tmp_path, capsys):  # noqa: F811
    model_dir, _ = tiny_chat_model
    out = tmp_path / "full"
    result = _run(capsys, "--workdir", full_run, "--out", out)
    assert (result["step"], result["kind"], result["dtype"], result["tokenizer"]) == ("1", "full", "float32", "saved")
    policy = _policy_logits(full_run)
    hf = _load(out)
    assert next(hf.parameters()).dtype == torch.float32
    np.testing.assert_allclose(_hf_logits(hf)[REAL], policy[REAL], rtol=0, atol=2e-5)
    base = _hf_logits(_load(model_dir))
    assert np.abs(base[REAL] - policy[REAL]).max() > 1e-3  # one step moved the weights
    # Every id that ended a completion in the run: the tokenizer's <eos>, then <|im_end|>.
    tok = tok_lib.load_tokenizer(out)
    eos = [tok.convert_tokens_to_ids("<eos>"), tok.convert_tokens_to_ids("<|im_end|>")]
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == eos and result["eos_ids"] == ",".join(map(str, eos))
    assert gen.pad_token_id == tok.pad_token_id
    # The run's tokenizer, chat template included.
    source = tok_lib.load_tokenizer(model_dir)
    assert tok(TEXT)["input_ids"] == source(TEXT)["input_ids"]
    chat = [{"role": "user", "content": "What is 2+3?"}]
    assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == source.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    _check_auto_tokenizer(result, out, source)
    assert not list(tmp_path.glob("*.tmp-*")) and not list(tmp_path.glob(".*"))  # renamed into place
    # bf16 on request: transformers loads bf16 weights, within bf16 rounding of the policy.
    result = _run(capsys, "--workdir", full_run, "--out", tmp_path / "bf16", "--dtype", "bfloat16")
    assert result["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf16 = _load(tmp_path / "bf16")
    assert next(hf16.parameters()).dtype == torch.bfloat16
    got = _hf_logits(hf16)[REAL]
    assert 0 < np.abs(got - policy[REAL]).max() < 0.05


def test_lora_export_folded_and_as_peft_adapters(lora_run, tiny_chat_model, tmp_path, capsys):  # noqa: F811
    peft = pytest.importorskip("peft")
    model_dir, _ = tiny_chat_model
    policy = _policy_logits(lora_run)
    base = _hf_logits(_load(model_dir))
    assert np.abs(base[REAL] - policy[REAL]).max() > 1e-3  # the adapters moved the policy
    # Folded (the default): a plain f32 model, the trained policy.
    result = _run(capsys, "--workdir", lora_run, "--out", tmp_path / "folded")
    assert (result["kind"], result["step"]) == ("lora_folded", "1")
    assert not (tmp_path / "folded" / "adapter_config.json").exists()
    np.testing.assert_allclose(_hf_logits(_load(tmp_path / "folded"))[REAL], policy[REAL], rtol=0, atol=2e-5)
    # PEFT adapters for model.path: base + adapters in peft is the same policy.
    result = _run(capsys, "--workdir", lora_run, "--out", tmp_path / "adapters", "--adapter-only")
    assert result["kind"] == "lora_adapters"
    adapter_config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir)
    assert sorted(adapter_config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    with_adapters = peft.PeftModel.from_pretrained(_load(model_dir), tmp_path / "adapters").eval()
    np.testing.assert_allclose(_hf_logits(with_adapters)[REAL], policy[REAL], rtol=0, atol=2e-5)
    tok = tok_lib.load_tokenizer(tmp_path / "adapters")
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "adapters").eos_token_id == eos
    # --step 0: the adapters as initialised (B = 0), i.e. the base model.
    result = _run(capsys, "--workdir", lora_run, "--out", tmp_path / "step0", "--step", 0)
    assert result["step"] == "0"
    np.testing.assert_allclose(_hf_logits(_load(tmp_path / "step0"))[REAL], base[REAL], rtol=0, atol=2e-5)


def test_quickstart_export_writes_the_character_tokenizer(tmp_path, capsys):
    # No model.path: a random-init model and the built-in character tokenizer; train.steps=0 saves the
    # step-0 checkpoint and compiles nothing.
    workdir = tmp_path / "run"
    train.run(["--config", QUICKSTART, "--workdir", str(workdir)] + [f"--config.{o}" for o in [
        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1",
        "model.head_dim=16", "model.intermediate_size=64", "sft.steps=0", "train.steps=0", "train.eval_every=0",
        "task.eval_size=4", "mesh.data=1", "mesh.fsdp=1"]])
    result = _run(capsys, "--workdir", workdir, "--out", tmp_path / "out")
    assert (result["step"], result["tokenizer"], result["eos_ids"]) == ("0", "char", "2")
    assert "character tokenizer" in result["stderr"] and "no chat template" in result["stderr"]
    # tokenizer.json as written is the run's tokenizer, whitespace and format tags included.
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "out")
    char = tok_lib.char_tokenizer(tok_lib.CHAR_ALPHABET)
    assert tok(TEXT)["input_ids"] == char(TEXT)["input_ids"] and tok.decode(tok(TEXT)["input_ids"]) == TEXT
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast")  # a name transformers 4 knows too
    _check_auto_tokenizer(result, tmp_path / "out", char)
    assert (tok.eos_token_id, tok.pad_token_id, len(tok)) == (2, 0, len(char))
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id == [2]
    config = cfg_lib.from_dict(json.loads((workdir / "config.json").read_text()))
    s = build.setup(config, workdir, for_eval=True)
    ours = np.asarray(model_lib.apply(s.model_config, s.params, jnp.asarray(TOKENS % len(char)),
                                      attention_mask=jnp.asarray(MASK)))
    hf = _load(tmp_path / "out")
    with torch.no_grad():
        got = hf(input_ids=torch.tensor(TOKENS % len(char), dtype=torch.long),
                 attention_mask=torch.tensor(MASK)).logits.numpy()
    np.testing.assert_allclose(got[REAL], ours[REAL], rtol=0, atol=2e-5)


def test_errors_name_the_problem_before_any_work(full_run, lora_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert "is not a directory" in _error(capsys, "--workdir", tmp_path / "nothing", "--out", out)
    (tmp_path / "empty").mkdir()
    assert "config.json missing" in _error(capsys, "--workdir", tmp_path / "empty", "--out", out)
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text((full_run / "config.json").read_text())
    assert "saved no checkpoint" in _error(capsys, "--workdir", no_ckpt, "--out", out)
    assert not (no_ckpt / "checkpoints").exists()  # nothing created in the workdir
    err = _error(capsys, "--workdir", full_run, "--out", out, "--step", 7)
    assert "--step 7" in err and "steps present: 0, 1" in err
    err = _error(capsys, "--workdir", full_run, "--out", out, "--adapter-only")
    assert "--adapter-only" in err and "full fine-tune" in err
    assert not out.exists()  # no error wrote anything
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _error(capsys, "--workdir", lora_run, "--out", out)
    assert "is not empty" in err and "--force" in err and (out / "keep.txt").read_text() == "mine"
    _run(capsys, "--workdir", lora_run, "--out", out, "--force")  # replaced whole
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "no_ckpt", "out"]  # no tmp or old dirs left
    assert export.main(["--workdir", str(full_run)]) == 2  # --out is required (argparse says so)


def test_peft_base_names_a_local_base_absolutely_and_a_hub_base_by_repo_and_revision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    assert export.peft_base("base") == (str(tmp_path / "base"), None)
    assert export.peft_base("Qwen/Qwen2.5-0.5B@7ae5576") == ("Qwen/Qwen2.5-0.5B", "7ae5576")
    assert export.peft_base("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)


def test_help_prints_usage_and_exits_0(capsys):
    assert export.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m grpo_jax.export") and "--adapter-only" in out and "RESULT" in out
