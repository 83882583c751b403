"""Write a random tiny Qwen2 Hugging Face directory that grpo_jax and TRL both load.

Model: hidden 256, intermediate 1024, 4 layers, 4 heads / 2 KV heads (head_dim 64), vocab 512, tied
embeddings, q/k/v bias, f32, built by transformers + torch and written with `save_pretrained`.
Tokenizer: `grpo_jax.tokenizer.char_tokenizer` over printable ASCII (104 ids < 512), written with
`save_pretrained` into the same directory (no chat template: the benchmarks use plain text prompts).

    python -m benchmarks.make_tiny_qwen2 benchmarks/_models/tiny_qwen2 [--seed 0]
"""
import argparse
import pathlib
import string

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grpo_jax.tokenizer import char_tokenizer


def make(path, *, seed: int = 0) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = char_tokenizer(string.printable)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, rms_norm_eps=1e-6, torch_dtype="float32",
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = make(args.path, seed=args.seed)
    print(f"wrote {path}: {sorted(p.name for p in path.iterdir())}")


if __name__ == "__main__":
    main()
