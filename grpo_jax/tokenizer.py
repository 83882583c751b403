"""Tokenizers: loading (HF dir / tokenizer.json / GGUF), chat templates, left-padded prompt batches.

Everything returns or takes a `transformers` fast tokenizer, so real models and the tiny
character-level tokenizer of the quick-start experiment go through the same code path.

Prompt batches are left-padded to a fixed width `max_length` (one shape, so the jitted sampler
compiles once): `tokens` i32[N, P] and `mask` i32[N, P] with the real tokens at the right end.
A prompt longer than `max_length` is an error by default; `truncate=True` keeps its last
`max_length` tokens instead (the end of a prompt, with the generation prompt of a chat template,
is what the model must continue from).
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import tokenizers
import transformers

# The answer-format tags of the synthetic tasks: one token each keeps sequences short on CPU.
FORMAT_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")


def load_tokenizer(path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
    """A `transformers` tokenizer from an HF directory, a bare tokenizer.json or a .gguf file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {path} does not exist")
    if path.is_dir():
        if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer_config.json")
        return transformers.AutoTokenizer.from_pretrained(str(path))
    if path.suffix == ".gguf":
        # transformers rebuilds the BPE tokenizer (and chat template) from the GGUF metadata.
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.suffix == ".json":
        # A bare tokenizer.json names no eos/pad roles; callers that need them set them.
        return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), clean_up_tokenization_spaces=False)
    raise ValueError(f"{path}: expected a directory, a tokenizer .json or a .gguf file")


def char_tokenizer(alphabet: str) -> transformers.PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of `alphabet`, plus specials and tags.

    Ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>, then the characters in `alphabet` order, then the
    four `FORMAT_TAGS` as single (non-special) added tokens, so `decode(..., skip_special_tokens=True)`
    keeps them. No token is added automatically on encode. `decode(encode(s)) == s` for any
    string over the alphabet (spaces and newlines included: nothing normalises or splits them).
    """
    chars = list(dict.fromkeys(alphabet))  # de-duplicate, keep order
    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    if not chars:
        raise ValueError("char_tokenizer: empty alphabet")
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in chars:
        vocab[ch] = len(vocab)
    # BPE without merges splits its input into single characters and looks each one up; with no
    # pre-tokenizer the whole text is one "word", so whitespace is an ordinary character.
    model = tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>")
    tok = tokenizers.Tokenizer(model)
    tok.decoder = tokenizers.decoders.Fuse()  # concatenate tokens as they are (default joins with " ")
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,  # it would turn " ." into "." and break round trips
    )


def encode_prompts(
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: list[str],
    *,
    max_length: int,
    chat: bool = False,
    system: str | None = None,
    truncate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt batch: (tokens i32[N, max_length], mask i32[N, max_length]).

    `chat=True` renders each text as a user turn (after an optional `system` turn) through the
    tokenizer's chat template with the generation prompt appended. Otherwise the text is encoded
    with the tokenizer's own special tokens (e.g. a Llama BOS). A prompt longer than `max_length`
    raises, unless `truncate=True`, which keeps its last `max_length` tokens.
    """
    if isinstance(texts, str):
        raise TypeError("encode_prompts: texts must be a list of strings, not one string")
    if max_length < 1:
        raise ValueError(f"encode_prompts: max_length must be >= 1, got {max_length}")
    if system is not None and not chat:
        raise ValueError("encode_prompts: system= needs chat=True (it is a chat-template turn)")
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"encode_prompts: chat=True but {type(tokenizer).__name__} has no chat template")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else pad_id  # any id works: the mask hides it
    tokens = np.full((len(texts), max_length), pad_id, dtype=np.int32)
    mask = np.zeros((len(texts), max_length), dtype=np.int32)
    for i, text in enumerate(texts):
        if chat:
            messages = ([{"role": "system", "content": system}] if system is not None else [])
            messages.append({"role": "user", "content": text})
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # The template already wrote every special token (BOS included): add none twice.
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > max_length:
            if not truncate:
                raise ValueError(
                    f"encode_prompts: prompt {i} has {len(ids)} tokens > max_length={max_length} "
                    f"(raise max_length or pass truncate=True to keep its last tokens): {text[:80]!r}")
            ids = ids[-max_length:]
        if ids:
            tokens[i, -len(ids):] = ids
            mask[i, -len(ids):] = 1
    return tokens, mask


def decode_completions(
    tokenizer: transformers.PreTrainedTokenizerBase,
    tokens,
    mask,
    *,
    eos_id: int | None = None,
) -> list[str]:
    """Text of each row's masked-in tokens, stopped before the first EOS, special tokens skipped.

    `tokens` [N, T] and `mask` [N, T] (any array type; nonzero = real). `eos_id` defaults to the
    tokenizer's EOS. Text up to the EOS is kept even when the row's mask runs past it.
    """
    tokens = np.asarray(tokens)
    mask = np.asarray(mask)
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ValueError(f"decode_completions: tokens {tokens.shape} and mask {mask.shape} must be equal [N, T]")
    eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    texts = []
    for row, row_mask in zip(tokens, mask):
        ids = row[row_mask != 0].tolist()
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return texts
