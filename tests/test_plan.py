"""`python -m grpo_jax.plan`: ahead-of-time compile of the train step and the sampler for a TPU
topology (libtpu, compile-only devices) and for this machine's CPU devices, with a tiny model."""
import importlib.util
import re

import pytest

from grpo_jax import plan

TINY = ["--config", "experiments/quickstart.py", "--config.model.num_layers=2",
        "--config.train.prompts_per_step=4", "--config.grpo.group_size=4"]
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install 'grpo_jax[tpu]'; the test extra brings it)")


def _result(out: str) -> dict:
    line = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert len(line) == 1, out
    assert out.rstrip().splitlines()[-1] == line[0]  # the last line
    return dict(kv.split("=", 1) for kv in line[0].split()[1:])


def _check(r: dict, extra=()) -> None:
    assert set(r) == {"fits", "per_chip_gib", "hbm_gib", "temp_gib", "params_gib", "opt_state_gib",
                      "flops_per_step", "compile_s", *extra}
    assert r["fits"] == "true"
    for k in ("per_chip_gib", "hbm_gib", "params_gib", "opt_state_gib", "flops_per_step", "compile_s"):
        assert float(r[k]) > 0, (k, r)
    assert float(r["per_chip_gib"]) < float(r["hbm_gib"])


def test_parse_topology():
    assert plan.parse_topology("v5e-8") == ("v5e", "v5e:2x4", (2, 4, 1))
    assert plan.parse_topology("v5e-4") == ("v5e", "v5e:2x2", (2, 2, 1))
    assert plan.parse_topology("v5e-16") == ("v5e", "v5e:4x4", (2, 2, 1))  # 4 hosts of 2x2
    assert plan.parse_topology("v5e:4x4") == ("v5e", "v5e:4x4", (2, 2, 1))
    assert plan.parse_topology("v6e-8") == ("v6e", "v6e:2x4", (2, 4, 1))
    assert plan.parse_topology("v5p-16") == ("v5p", "v5p:2x2x2", (2, 2, 1))  # 16 TensorCores = 8 chips
    assert plan.parse_topology("v4-8") == ("v4", "v4:2x2x1", (2, 2, 1))
    with pytest.raises(plan.PlanError, match="unknown topology"):
        plan.parse_topology("v5litepod-8x")
    with pytest.raises(plan.PlanError, match="no v5e/v6e slice has 6 chips"):
        plan.parse_topology("v5e-6")


def test_step_flops_by_hand():
    """One layer, D=2, H=KV=1, hd=2, F=1, V=3, N=1, P=1, T=2: count every term by hand."""
    from grpo_jax.model import ModelConfig
    c = ModelConfig(vocab_size=3, hidden_size=2, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2,
                    intermediate_size=1)
    per_token = 2 * (2 * (4 + 4) + 3 * 2)  # 44: q,k,v,o (D x 2*H*hd + 2*KV*hd) + gate,up,down
    prefill = per_token * 1 + 8 * 1 + 2 * 2 * 3  # 1 token seeing 1 key (4*H*hd = 8 per key), head on 1 row
    decode = per_token * 1 + 8 * 2 + 2 * 2 * 3  # token 1 at slot 1 sees 2 keys
    full = per_token * 3 + 8 * (1 + 2 + 3) + 2 * 2 * 3 * 2  # 3 tokens, LM head on T=2 positions
    f = plan.step_flops(c, n=1, p=1, t=2, use_reference=True, num_iterations=2, steps_per_generation=2)
    assert f == {"sample": prefill + decode, "reference": full, "old_logps": full, "policy": 3 * full * 2}


def test_oom_message_parsed():
    msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
           "Used 19.72G of 15.75G hbm. Exceeded hbm capacity by 3.97G. ... CompileTimeHbmOom: "
           "Program hbm requirement 19.72G ... required (19.72G) exceeds available HBM (15.75G)")
    assert plan._oom_numbers(msg) == (19.72, 15.75)
    assert plan._oom_numbers("(512M) exceeds available HBM (15.75G)") == (0.5, 15.75)


def test_libtpu_missing_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else spec(name, *a))
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    assert plan.main([*TINY, "--topology", "v5e-4"]) == 2
    err = capsys.readouterr().err
    assert "libtpu is not installed" in err and "grpo_jax[tpu]" in err and "--topology cpu" in err


spec = importlib.util.find_spec  # the real one, for the monkeypatched lookup above


@pytest.mark.slow
def test_plan_local(capsys):
    """`--topology local`: this machine's own devices and memory (what the sweep packs by), here the
    8 simulated CPU devices sharing the host's RAM."""
    assert plan.main([*TINY, "--topology", "local"]) == 0
    out = capsys.readouterr().out
    _check(_result(out))
    assert "plan: local (cpu, 8 chips over 1 host(s)" in out
    assert "mesh data=8 x fsdp=1" in out  # the 8 simulated CPU devices
    assert "sampler weights: replicated (" in out  # says which sampling.weight_layout it planned


@pytest.mark.slow
@needs_libtpu
def test_plan_v5e_2x2(capsys):
    """A tiny model on a v5e 2x2 slice (4 chips, one host): compiles (seconds), fits, sane numbers.
    `--cells 4`: the sweep's vmapped program of 4 cells (grpo_jax.sweep.program_functions) for the
    same slice: each cell holds its own params and optimizer state (4x one run's), and it fits."""
    assert plan.main([*TINY, "--topology", "v5e-4"]) == 0
    out = capsys.readouterr().out
    r = _result(out)
    _check(r)
    assert float(r["hbm_gib"]) == 15.75
    assert "4 chips over 1 host(s)" in out
    assert re.search(r"largest prompts_per_step that fits: \d+", out)

    assert plan.main([*TINY, "--topology", "v5e-4", "--cells", "4"]) == 0
    out = capsys.readouterr().out
    four = _result(out)
    _check(four, extra=("cells", "max_cells"))
    assert (four["cells"], four["max_cells"]) == ("4", "4")
    assert "sweep program: 4 cells" in out
    for key in ("params_gib", "opt_state_gib"):
        assert float(four[key]) == pytest.approx(4 * float(r[key]), rel=1e-3), key
    assert float(four["per_chip_gib"]) > float(r["per_chip_gib"])


@pytest.mark.slow
@needs_libtpu
def test_plan_multi_host_lora(capsys):
    """v5e 4x4 = 16 chips over 4 hosts, with LoRA (adapters trained, base frozen, no reference copy)."""
    assert plan.main([*TINY, "--topology", "v5e-16", "--config.model.lora_rank=4",
                      "--config.sft.steps=0"]) == 0
    out = capsys.readouterr().out
    _check(_result(out))
    assert "16 chips over 4 host(s)" in out and "LoRA r=4" in out


def test_plan_sampler_follows_weight_layout():
    """The planned sampler is compiled with config.sampling.weight_layout: "tensor" needs less per
    chip than "replicated" (the train step is not compiled here)."""
    peaks = {}
    for layout in ("replicated", "tensor"):
        config, topology, _, _ = plan.parse_args([*TINY, "--topology", "cpu", "--config.mesh.data=2",
                                               "--config.mesh.fsdp=4", f"--config.sampling.weight_layout={layout}"])
        peaks[layout] = plan.build_programs(config, plan.get_topology(topology)).sample().peak
    assert peaks["tensor"] < peaks["replicated"], peaks


# --- issue 23: what the plan compiles is what the run does (no compile: compile_one is recorded) -----

def _planned_calls(monkeypatch, *args):
    """Builds the programs for `args` (a --config ... command line, --topology cpu) and runs the
    train step's and the sampler's compile with compile_one recorded instead: -> (Programs, the
    train step's (args, kwargs), the sampler's)."""
    calls = []
    monkeypatch.setattr(plan, "compile_one", lambda jitted, *a, **k: calls.append((a, k)))
    config, topology, _, _ = plan.parse_args([*args, "--topology", "cpu"])
    progs = plan.build_programs(config, plan.get_topology(topology))
    progs.train(config.train.prompts_per_step)
    progs.sample()
    return progs, calls[0], calls[1]


def test_plan_compiles_the_sampler_at_the_rows_one_call_samples(monkeypatch):
    """The sampler is planned at the rows one rollout.sample_rows call holds: B * G, a DAPO
    dynamic-sampling round's ceil(B * factor) * G, or a chunk of sampling.batch_size rows."""
    def rows(*overrides):
        _, train, sample = _planned_calls(monkeypatch, *TINY, *overrides)
        assert train[0][2].prompt_tokens.shape[0] == 16  # the update: always B * G
        return sample[0][2].shape[0]  # (config, params, prompt_tokens, ...)
    dynamic = ("--config.grpo.dynamic_sampling=true", "--config.grpo.dynamic_sampling_factor=3")
    assert rows() == 16
    assert rows(*dynamic) == 48  # ceil(4 * 3) prompts x G = 4 per round, not B * G = 16
    assert rows(*dynamic, "--config.sampling.batch_size=16") == 16
    assert rows("--config.sampling.batch_size=8") == 8


def test_lora_step_flops_by_hand():
    """LoRA (rank 1 on q only), one layer, D=2, H=KV=1, hd=2, F=1, V=3, N=1, P=1, T=2: the frozen
    weights get no weight gradient (backward 1 x their forward), attention and the adapters 2 x; the
    adapters run in every forward of the policy and the sampler, not in the reference's."""
    from grpo_jax.model import ModelConfig
    c = ModelConfig(vocab_size=3, hidden_size=2, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2,
                    intermediate_size=1, lora_rank=1, lora_targets=("q",))
    matmul, adapter = 44, 2 * 1 * (2 + 2)  # per token: as test_step_flops_by_hand; q's x A (2x1), (xA) B (1x2)
    # The update's forward over P + T = 3 tokens: attention 8 * (1 + 2 + 3), LM head on T = 2 rows.
    parts = {"matmul": 3 * matmul, "attention": 8 * 6, "head": 2 * 2 * 3 * 2, "adapters": 3 * adapter}
    forward = sum(parts.values())
    lora_backward = parts["matmul"] + parts["head"] + 2 * (parts["attention"] + parts["adapters"])
    reference = forward - parts["adapters"]
    sample = (matmul + 8 * 1 + 12 + adapter) + (matmul + 8 * 2 + 12 + adapter)  # prefill + 1 decode step
    f = plan.step_flops(c, n=1, p=1, t=2, use_reference=True, num_iterations=2, steps_per_generation=2,
                        lora=True)
    assert f == {"sample": sample, "reference": reference, "old_logps": forward,
                 "policy": 2 * (forward + lora_backward)}
    full = plan.step_flops(c, n=1, p=1, t=2, use_reference=True)["policy"]
    assert full == 3 * reference  # a full fine-tune's step: 3 x the forward, as before
    assert f["policy"] / 2 < full  # 528 < 612: no weight gradient for the frozen weights


def _write_tiny_gguf(path, *, layers=2, d=32, heads=4, kv=2, hd=8, f=64, v=64):
    """A llama-architecture GGUF of random F32 tensors with a trivial byte-level vocabulary."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(f)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(v)
    w.add_key_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(v)])
    w.add_token_merges([])
    w.add_token_types([1] * v)
    w.add_token_scores([0.0] * v)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    shapes = {"attn_q": (heads * hd, d), "attn_k": (kv * hd, d), "attn_v": (kv * hd, d),
              "attn_output": (d, heads * hd), "ffn_gate": (f, d), "ffn_up": (f, d), "ffn_down": (d, f),
              "attn_norm": (d,), "ffn_norm": (d,)}
    tensors = {"token_embd.weight": (v, d), "output_norm.weight": (d,),
               **{f"blk.{i}.{name}.weight": s for i in range(layers) for name, s in shapes.items()}}
    for name, shape in tensors.items():  # HF [out, in] order, as llama.cpp writes them
        w.add_tensor(name, rng.normal(0, 0.02, shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_plan_reads_a_gguf_model(monkeypatch, tmp_path):
    """model.path = a .gguf (experiments/smollm2_addition.py): the plan reads the architecture from its
    header (no tensor) and plans it; it used to refuse GGUF paths."""
    from grpo_jax import weights
    path = _write_tiny_gguf(tmp_path / "tiny.gguf")
    progs, _, sample = _planned_calls(monkeypatch, "--config", "experiments/smollm2_addition.py",
                                      f"--config.model.path={path}", "--config.train.prompts_per_step=2",
                                      "--config.grpo.group_size=4", "--config.train.eval_batch_size=8")
    mc = progs.model_config
    assert (mc.num_layers, mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.head_dim, mc.intermediate_size,
            mc.vocab_size, mc.tie_embeddings) == (2, 32, 4, 2, 8, 64, 64, True)
    assert mc == weights.load_gguf(path)[0]  # the loader's own reading of the header
    assert sample[0][2].shape[0] == 8  # 2 prompts x G = 4



def test_plan_compiles_the_step_the_trainer_runs_with_the_menu(capsys):
    """The plan's train step has the trainer's inputs: the adaptive-entropy controller in the state,
    the rewards of grpo.kl_in_reward and dynamic sampling's row mask in the batch (without them the
    step refused to trace: "adaptive_entropy: the TrainState needs its controller")."""
    assert plan.main([*TINY, "--topology", "local", "--config.grpo.adaptive_entropy=true",
                      "--config.grpo.kl_in_reward=true", "--config.grpo.loss_type=cispo",
                      "--config.grpo.top_entropy_quantile=0.2", "--config.sampling.top_p=0.9",
                      "--config.grpo.dynamic_sampling=true"]) == 0
    _check(_result(capsys.readouterr().out))
