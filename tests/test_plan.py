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


def _check(r: dict) -> None:
    assert set(r) == {"fits", "per_chip_gib", "hbm_gib", "temp_gib", "params_gib", "opt_state_gib",
                      "flops_per_step", "compile_s"}
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
def test_plan_cpu(capsys):
    assert plan.main([*TINY, "--topology", "cpu"]) == 0
    out = capsys.readouterr().out
    _check(_result(out))
    assert "mesh data=8 x fsdp=1" in out  # the 8 simulated CPU devices
    assert "sampler weights: replicated (" in out  # says which sampling.weight_layout it planned


@pytest.mark.slow
@needs_libtpu
def test_plan_v5e_2x2(capsys):
    """A tiny model on a v5e 2x2 slice (4 chips, one host): compiles (seconds), fits, sane numbers."""
    assert plan.main([*TINY, "--topology", "v5e-4"]) == 0
    out = capsys.readouterr().out
    r = _result(out)
    _check(r)
    assert float(r["hbm_gib"]) == 15.75
    assert "4 chips over 1 host(s)" in out
    assert re.search(r"largest prompts_per_step that fits: \d+", out)


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
        config, topology, _ = plan.parse_args([*TINY, "--topology", "cpu", "--config.mesh.data=2",
                                               "--config.mesh.fsdp=4", f"--config.sampling.weight_layout={layout}"])
        peaks[layout] = plan.build_programs(config, plan.get_topology(topology)).sample().peak
    assert peaks["tensor"] < peaks["replicated"], peaks
