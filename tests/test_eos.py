"""End-of-sequence ids: every id that ends a completion (tokenizer EOS, generation_config.json,
the chat template's end-of-turn token) is found, and any of them stops the sampler and the decoder.

Tokenizers are tiny word-level vocabularies built here ("w0" .. "w63", some renamed to special
tokens), with ChatML (Qwen, SmolLM2), Llama 3 and Gemma style chat templates.
"""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import transformers

from grpo_jax import evaluate, model, sampling
from grpo_jax.model import ModelConfig
from grpo_jax.tokenizer import char_tokenizer, decode_completions, eos_token_ids, load_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
         "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
         "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
# Ids of the special tokens in the tiny vocabularies (everything else is "w<id>").
CHATML_SPECIALS = {"<unk>": 0, "<|endoftext|>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
LLAMA3_SPECIALS = {"<unk>": 0, "<|begin_of_text|>": 1, "<|end_of_text|>": 2, "<|start_header_id|>": 3,
                   "<|end_header_id|>": 4, "<|eot_id|>": 5}
GEMMA_SPECIALS = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<start_of_turn>": 3, "<end_of_turn>": 4}


def word_tokenizer(specials: dict[str, int], *, eos: str | None, bos: str | None = None,
                   template: str | None = None, vocab_size: int = 64) -> transformers.PreTrainedTokenizerFast:
    """Words "w0" .. "w<vocab_size-1>" split on whitespace, with `specials` (token -> id) replacing
    the words at those ids; `specials` must hold "<unk>"."""
    vocab = {f"w{i}": i for i in range(vocab_size)}
    names = {i: f"w{i}" for i in range(vocab_size)}
    for token, i in specials.items():
        del vocab[names[i]]
        vocab[token] = i
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in specials])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token=eos,
                                                bos_token=bos, clean_up_tokenization_spaces=False)
    if template is not None:
        fast.chat_template = template
    assert len(fast) == vocab_size
    return fast


def chatml(**kwargs):
    return word_tokenizer(CHATML_SPECIALS, eos="<|endoftext|>", template=CHATML, **kwargs)


# --- eos_token_ids ------------------------------------------------------------------------------

def test_chat_template_end_of_turn_joins_the_eos():
    # Qwen2.5 base-style: eos <|endoftext|>, but assistant turns end with <|im_end|>.
    assert eos_token_ids(chatml()) == (1, 3)
    # Llama 3: eos <|end_of_text|>, turns end with <|eot_id|>.
    llama3 = word_tokenizer(LLAMA3_SPECIALS, eos="<|end_of_text|>", bos="<|begin_of_text|>", template=LLAMA3)
    assert eos_token_ids(llama3) == (2, 5)
    # Gemma: <end_of_turn> (after a `| trim`med content).
    gemma = word_tokenizer(GEMMA_SPECIALS, eos="<eos>", bos="<bos>", template=GEMMA)
    assert eos_token_ids(gemma) == (2, 4)
    # The end of turn already is the eos (SmolLM2, Qwen2.5-Instruct): one id, not two.
    assert eos_token_ids(word_tokenizer(CHATML_SPECIALS, eos="<|im_end|>", template=CHATML)) == (3,)
    # No eos at all: the template's end of turn alone still lets completions stop.
    assert eos_token_ids(word_tokenizer(CHATML_SPECIALS, eos=None, template=CHATML)) == (3,)


@pytest.mark.parametrize("template", [
    None,  # no chat template
    "{% for m in messages %}{{ m['content'] }}{% endfor %}",  # nothing after the assistant content
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\nEnd.\n{% endfor %}",  # plain text after it
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no assistant turns') }}"
    "{% endif %}{{ m['content'] }}{% endfor %}",  # a template that raises on an assistant turn
])
def test_no_end_of_turn_token_gives_the_eos_alone(template):
    assert eos_token_ids(word_tokenizer(CHATML_SPECIALS, eos="<|endoftext|>", template=template)) == (1,)


def test_char_tokenizer_has_its_eos_only():
    assert eos_token_ids(char_tokenizer("0123456789")) == (2,)


def test_generation_config_ids_join_the_union(tmp_path):
    chatml().save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert (tok.eos_token_id, bool(tok.chat_template)) == (1, True)  # survived the round trip
    assert eos_token_ids(tok, tmp_path) == (1, 3)  # no generation_config.json yet
    config = tmp_path / "generation_config.json"
    config.write_text(json.dumps({"bos_token_id": 2, "eos_token_id": [9, 3]}))  # a list
    # The tokenizer's eos first (the sampler pads finished rows with it), then the file, de-duplicated.
    assert eos_token_ids(tok, tmp_path) == (1, 9, 3)
    assert eos_token_ids(tok, str(tmp_path)) == (1, 9, 3)
    assert eos_token_ids(tok) == (1, 3)  # without the model path the file is not read
    config.write_text(json.dumps({"eos_token_id": 9}))  # an int
    assert eos_token_ids(tok, tmp_path) == (1, 9, 3)
    config.write_text(json.dumps({"eos_token_id": None}))  # null: nothing to add
    assert eos_token_ids(tok, tmp_path) == (1, 3)
    config.write_text(json.dumps({"eos_token_id": [9, 3]}))
    # A .gguf model (a file, not a directory) has no generation_config.json, even beside one.
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert eos_token_ids(tok, gguf) == (1, 3)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        eos_token_ids(tok, tmp_path / "nowhere")


@pytest.mark.parametrize("value", ['"2"', "[1, \"x\"]", "true", "[2, false]", "{\"a\": 1}", "1.0"])
def test_bad_generation_config_type_names_the_file_and_field(tmp_path, value):
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": %s}' % value)
    with pytest.raises(ValueError, match=r"generation_config\.json: field eos_token_id must be an int or a list"):
        eos_token_ids(chatml(), tmp_path)


def test_bad_ids_and_no_ids_are_errors(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"generation_config\.json: not readable JSON"):
        eos_token_ids(chatml(), tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [3, 64]}')  # the vocabulary is 64
    with pytest.raises(ValueError, match=r"id 64 from .*generation_config\.json field eos_token_id is "
                                         r"outside the tokenizer's 64 tokens"):
        eos_token_ids(chatml(), tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": -1}')
    with pytest.raises(ValueError, match="id -1 from"):
        eos_token_ids(chatml(), tmp_path)
    # No eos, no template, no generation config: a model that could never stop. The error names
    # the tokenizer (its class, and its path when it was loaded from one).
    with pytest.raises(ValueError, match=r"could never stop"):
        eos_token_ids(word_tokenizer(CHATML_SPECIALS, eos=None))
    word_tokenizer(CHATML_SPECIALS, eos=None).save_pretrained(tmp_path / "no_eos")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'no_eos'}') has no eos_token_id")):
        eos_token_ids(load_tokenizer(tmp_path / "no_eos"))


# --- decode_completions with several ids ----------------------------------------------------------

def test_decode_completions_cuts_at_the_first_of_any_eos():
    tok = chatml()
    tokens = np.array([[10, 11, 3, 12, 1],    # <|im_end|> first
                       [10, 1, 11, 3, 12],    # <|endoftext|> first
                       [10, 11, 12, 13, 14],  # neither: all of it
                       [3, 10, 11, 12, 13]])  # an immediate stop: empty text
    mask = np.ones_like(tokens)
    assert decode_completions(tok, tokens, mask, eos_id=(1, 3)) == ["w10 w11", "w10", "w10 w11 w12 w13 w14", ""]
    assert decode_completions(tok, tokens, mask, eos_id=(3, 1)) == ["w10 w11", "w10", "w10 w11 w12 w13 w14", ""]
    assert decode_completions(tok, tokens, mask, eos_id=np.array([1, 3])) == ["w10 w11", "w10",
                                                                              "w10 w11 w12 w13 w14", ""]
    # An int, or the default (the tokenizer's eos, <|endoftext|> = 1), as before: specials are skipped.
    assert decode_completions(tok, tokens, mask, eos_id=3) == ["w10 w11", "w10 w11", "w10 w11 w12 w13 w14", ""]
    assert decode_completions(tok, tokens, mask) == ["w10 w11 w12", "w10", "w10 w11 w12 w13 w14",
                                                     "w10 w11 w12 w13"]
    assert decode_completions(tok, tokens, mask, eos_id=np.int64(1)) == decode_completions(tok, tokens, mask)


# --- the sampler and evaluate.generate stop at the template's end of turn --------------------------

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, rope_theta=10000.0, tie_embeddings=False, attention_bias=True)
T = 8


def test_sampler_and_generate_stop_at_any_eos_id():
    params = model.init_params(CFG, jax.random.key(0))
    # Random-init logits are near uniform; scale the head so greedy choices are not float noise.
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 25.0
    prompt_ids = [40, 41, 42, 43, 44]
    prompt = jnp.asarray([prompt_ids], jnp.int32)
    ones = jnp.ones_like(prompt)
    key = jax.random.key(0)
    free = sampling.sample(CFG, params, prompt, ones, key, max_new_tokens=T, eos_id=-1, temperature=0.0)
    c = np.asarray(free.tokens)[0].tolist()  # the greedy completion, never stopped
    # The end-of-turn token: the first greedy token from step 2 on that did not occur before it.
    step = next(s for s in range(2, T - 1) if c[s] not in c[:s])
    im_end = c[step]
    unused = [i for i in range(CFG.vocab_size) if i not in c and i not in prompt_ids]
    endoftext, im_start, unk = unused[:3]  # the tokenizer's eos never comes up in this completion
    tok = word_tokenizer({"<unk>": unk, "<|endoftext|>": endoftext, "<|im_start|>": im_start,
                          "<|im_end|>": im_end}, eos="<|endoftext|>", template=CHATML)
    eos_ids = eos_token_ids(tok)
    assert eos_ids == (endoftext, im_end)

    # Only the tokenizer's eos (today's behaviour): the completion runs to the limit.
    out = sampling.sample(CFG, params, prompt, ones, key, max_new_tokens=T, eos_id=tok.eos_token_id,
                          temperature=0.0)
    assert np.asarray(out.mask)[0].tolist() == [1.0] * T
    # All of them: the row stops right after <|im_end|>, then pads with eos_ids[0].
    out = sampling.sample(CFG, params, prompt, ones, key, max_new_tokens=T, eos_id=eos_ids, temperature=0.0)
    assert np.asarray(out.mask)[0].tolist() == [1.0] * (step + 1) + [0.0] * (T - step - 1)
    assert np.asarray(out.tokens)[0].tolist() == c[: step + 1] + [endoftext] * (T - step - 1)

    # The text ends before <|im_end|>, even where the mask runs past it.
    expected = tok.decode(c[:step], skip_special_tokens=True)
    full = tok.decode(c, skip_special_tokens=True)
    assert len(full) > len(expected)
    assert decode_completions(tok, free.tokens, free.mask, eos_id=eos_ids) == [expected]
    assert decode_completions(tok, free.tokens, free.mask) == [full]  # the default: the tokenizer's eos

    # evaluate.generate stops there by default (eos_ids = eos_token_ids(tokenizer)), or as told.
    text = " ".join(tok.convert_ids_to_tokens(prompt_ids))
    assert tok(text)["input_ids"] == prompt_ids
    common = dict(key=key, batch_size=1, max_prompt_length=len(prompt_ids), max_new_tokens=T,
                  temperature=0.0, put=jnp.asarray)
    assert evaluate.generate(CFG, params, tok, [text], **common) == [expected]
    assert evaluate.generate(CFG, params, tok, [text], eos_ids=(endoftext,), **common) == [full]
