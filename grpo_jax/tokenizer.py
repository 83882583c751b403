"""Tokenizers: loading (HF dir / tokenizer.json / GGUF), chat templates, EOS ids, left-padded prompts.

Everything returns or takes a `transformers` fast tokenizer, so real models and the tiny
character-level tokenizer of the quick-start experiment go through the same code path.

Prompt batches are left-padded to a fixed width `max_length` (one shape, so the jitted sampler
compiles once): `tokens` i32[N, P] and `mask` i32[N, P] with the real tokens at the right end.
A prompt longer than `max_length` is an error by default; `truncate=True` keeps its last
`max_length` tokens instead (the end of a prompt, with the generation prompt of a chat template,
is what the model must continue from).

End of a completion: an instruct model ends its turn with a token that is often not the
tokenizer's `eos_token` (`<|im_end|>` for ChatML models whose eos is `<|endoftext|>`, `<|eot_id|>`
for Llama 3, `<end_of_turn>` for Gemma). `eos_token_ids` collects every id that ends a completion,
so the sampler stops at any of them and `decode_completions` cuts at the first.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import pathlib
import string

import numpy as np
import tokenizers
import transformers

from grpo_jax import ConfigError, hub

# The answer-format tags of the synthetic tasks: one token each keeps sequences short on CPU.
FORMAT_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
# The built-in character tokenizer's alphabet: every character the synthetic tasks' prompts use.
CHAR_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"
# tokenizer_config.json classes that mean "the tokenizer.json pipeline as it is" (transformers 5 / 4).
_GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


@functools.lru_cache(maxsize=2)
def _gguf_tokenizer(path: pathlib.Path, inode: int, mtime_ns: int, size: int):
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_tokenizer(path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
    """A `transformers` tokenizer from an HF directory, a bare tokenizer.json or a .gguf file, local or
    a Hub name (its tokenizer files fetched into huggingface_hub's cache: `grpo_jax.hub`)."""
    path = hub.resolve(path, key="load_tokenizer(path)", allow_patterns=hub.TOKENIZER_FILES)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {path} does not exist")
    if path.is_dir():
        if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise FileNotFoundError(f"{path} holds neither tokenizer.json nor tokenizer_config.json")
        settings = path / "tokenizer_config.json"
        named = json.loads(settings.read_text()).get("tokenizer_class") if settings.is_file() else None
        if named in _GENERIC_CLASSES and (path / "tokenizer.json").is_file():
            # A tokenizer.json saved as is (the character tokenizer, or any plain `tokenizers`
            # pipeline): AutoTokenizer would pick the class of config.json's model_type instead
            # (Qwen2Tokenizer for a qwen2 model) and replace its pre-tokenizer, dropping spaces.
            return transformers.PreTrainedTokenizerFast.from_pretrained(str(path))
        return transformers.AutoTokenizer.from_pretrained(str(path))
    if path.suffix == ".gguf":
        # transformers rebuilds the BPE tokenizer (and chat template) from the GGUF metadata: seconds
        # in pure Python, so once per process and file version; each caller gets its own copy.
        st = path.resolve().stat()
        return copy.deepcopy(_gguf_tokenizer(path.resolve(), st.st_ino, st.st_mtime_ns, st.st_size))
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
    for i, ids in enumerate(prompt_ids(tokenizer, texts, chat=chat, system=system)):
        if len(ids) > max_length:
            if not truncate:
                raise ValueError(
                    f"encode_prompts: prompt {i} has {len(ids)} tokens > max_length={max_length} "
                    f"(raise max_length or pass truncate=True to keep its last tokens): {texts[i][:80]!r}")
            ids = ids[-max_length:]
        if ids:
            tokens[i, -len(ids):] = ids
            mask[i, -len(ids):] = 1
    return tokens, mask


# A chat-template probe: the assistant says this, and the text right after it ends the turn. Plain
# letters survive templates that strip or split the content (Qwen3 splits on </think>).
_PROBE = "Zq7xOkProbe"


def _template_end_of_turn(tokenizer) -> int | None:
    """Id of the special/added token the chat template writes right after an assistant turn's
    content (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`), or None: no template, a template that
    raises on this conversation, or one that writes no special token there."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 -- any template error (e.g. raise_exception in Jinja) means "unknown"
        return None
    if not isinstance(rendered, str) or _PROBE not in rendered:
        return None
    rest = rendered[rendered.rindex(_PROBE) + len(_PROBE):].lstrip()  # Llama 2 writes "<content> </s>"
    candidates = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
    # Longest first: "<|end|>" must not win over "<|endoftext|>" when both are tokens.
    for token in sorted(candidates, key=len, reverse=True):
        if token and rest.startswith(token):
            token_id = tokenizer.convert_tokens_to_ids(token)
            return token_id if isinstance(token_id, int) else None
    return None


def _generation_config_eos(model_path: pathlib.Path) -> list[int]:
    """`eos_token_id` of `model_path`/generation_config.json (an int or a list of ints; absent or
    null: none). A .gguf file or a directory without the file has none."""
    path = model_path / "generation_config.json"
    if not model_path.is_dir() or not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    value = data.get("eos_token_id") if isinstance(data, dict) else None
    if value is None:
        return []
    ids = value if isinstance(value, list) else [value]
    # bool is an int in Python; `true` is no token id.
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: field eos_token_id must be an int or a list of ints, got {value!r}")
    return ids


def eos_token_ids(tokenizer: transformers.PreTrainedTokenizerBase,
                  model_path: str | os.PathLike | None = None) -> tuple[int, ...]:
    """Every token id that ends a completion, de-duplicated, the tokenizer's EOS first.

    The union of the tokenizer's `eos_token_id` (first when set: the sampler pads finished rows
    with `eos_ids[0]`), `eos_token_id` of `model_path`/generation_config.json (an int or a list;
    `model_path` a HF directory; a .gguf file has no generation config), and the token the chat
    template writes right after an assistant turn's content. Every id must be < len(tokenizer);
    finding none is a ValueError (such a model would never stop).
    """
    name = f"{type(tokenizer).__name__}({getattr(tokenizer, 'name_or_path', '')!r})"
    vocab = len(tokenizer)
    found: list[tuple[int, str]] = []  # (id, where it came from), in priority order
    if tokenizer.eos_token_id is not None:
        found.append((tokenizer.eos_token_id, f"{name}.eos_token_id"))
    if model_path is not None and str(model_path) != "":
        model_path = hub.resolve(model_path, key="eos_token_ids(model_path)")  # a Hub name: its snapshot
        if not model_path.exists():
            raise FileNotFoundError(f"eos_token_ids: model path {model_path} does not exist")
        source = f"{model_path / 'generation_config.json'} field eos_token_id"
        found += [(i, source) for i in _generation_config_eos(model_path)]
    turn_end = _template_end_of_turn(tokenizer)
    if turn_end is not None:
        found.append((turn_end, f"{name}'s chat template end of turn"))
    for token_id, source in found:
        if not 0 <= token_id < vocab:
            raise ValueError(f"eos_token_ids: id {token_id} from {source} is outside the tokenizer's "
                             f"{vocab} tokens (a tokenizer of another model?)")
    ids = tuple(dict.fromkeys(token_id for token_id, _ in found))
    if not ids:
        raise ValueError(f"eos_token_ids: {name} has no eos_token_id, no end-of-turn token in a chat "
                         f"template, and no generation_config.json eos_token_id: a completion could never "
                         f"stop (set the tokenizer's eos_token)")
    return ids


def _as_ids(eos_id) -> tuple[int, ...]:
    """An int, or a tuple / list / array of ints, as a tuple of ints."""
    return (int(eos_id),) if np.ndim(eos_id) == 0 else tuple(int(e) for e in np.asarray(eos_id).ravel())


def prompt_ids(tokenizer: transformers.PreTrainedTokenizerBase, texts: list[str], *, chat: bool = False,
               system: str | None = None) -> list[list[int]]:
    """The token ids of each prompt exactly as `encode_prompts` writes them (before padding).

    `chat=True`: the text as a user turn (after an optional `system` turn) through the chat template,
    with the generation prompt; otherwise the text with the tokenizer's own special tokens.
    """
    if chat:
        rendered = []
        for text in texts:
            messages = ([{"role": "system", "content": system}] if system is not None else [])
            messages.append({"role": "user", "content": text})
            rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        # The template already wrote every special token (BOS included): add none twice.
        return tokenizer(rendered, add_special_tokens=False)["input_ids"] if rendered else []
    return tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []


def decode_completions(
    tokenizer: transformers.PreTrainedTokenizerBase,
    tokens,
    mask,
    *,
    eos_id: int | tuple[int, ...] | None = None,
) -> list[str]:
    """Text of each row's masked-in tokens, stopped before the first EOS, special tokens skipped.

    `tokens` [N, T] and `mask` [N, T] (any array type; nonzero = real). `eos_id`: an int or a tuple
    of ints (the text stops before the first of any of them); it defaults to the tokenizer's EOS.
    Text up to the EOS is kept even when the row's mask runs past it.
    """
    tokens = np.asarray(tokens)
    mask = np.asarray(mask)
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ValueError(f"decode_completions: tokens {tokens.shape} and mask {mask.shape} must be equal [N, T]")
    eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    stops = frozenset(_as_ids(eos_id)) if eos_id is not None else frozenset()
    texts = []
    for row, row_mask in zip(tokens, mask):
        ids = row[row_mask != 0].tolist()
        ids = ids[: next((i for i, t in enumerate(ids) if t in stops), len(ids))]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return texts


def from_config(config) -> transformers.PreTrainedTokenizerBase:
    """The run's tokenizer: `model.tokenizer`, else the model path's own, else (a random-init model)
    the built-in character tokenizer over `CHAR_ALPHABET`."""
    m = config.model
    path = m.tokenizer or m.path
    if not path:
        return char_tokenizer(CHAR_ALPHABET)
    key = "model.tokenizer" if m.tokenizer else "model.path"
    # A Hub name: model.path fetches the whole model at once (the weights follow), model.tokenizer
    # only the tokenizer files.
    local = hub.resolve(path, key=key, allow_patterns=hub.TOKENIZER_FILES if m.tokenizer else None)
    if not local.exists():
        raise ConfigError(f"config key `{key}`: {path!r} does not exist")
    return load_tokenizer(local)
