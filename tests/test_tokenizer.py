"""Tokenizer tests: char tokenizer round trips, left-padding, EOS-aware decoding, real vocabularies.

The Qwen test checks llama.cpp's reference tokenisations (../shared/tokenizers/qwen3/tests) and the
chat template; the GGUF test checks the SmolLM2 tokenizer against the token list stored in the file.
"""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from grpo_jax.tokenizer import FORMAT_TAGS, char_tokenizer, decode_completions, encode_prompts, load_tokenizer

ALPHABET = "0123456789+-*/=() \n<>abcxyz"


@pytest.fixture(scope="module")
def chars():
    return char_tokenizer(ALPHABET)


def test_char_tokenizer_ids_are_hand_checkable(chars):
    # 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>, then ALPHABET in order: "0" is 4, "1" is 5, ...
    assert (chars.pad_token_id, chars.bos_token_id, chars.eos_token_id, chars.unk_token_id) == (0, 1, 2, 3)
    assert chars("12+3")["input_ids"] == [5, 6, 4 + ALPHABET.index("+"), 7]
    tag_ids = [len(chars) - 4 + i for i in range(4)]
    ids = chars("<reasoning>1</reasoning><answer>2</answer>")["input_ids"]
    assert ids == [tag_ids[0], 5, tag_ids[1], tag_ids[2], 6, tag_ids[3]]  # each tag one token
    assert len(chars) == 4 + len(ALPHABET) + len(FORMAT_TAGS)
    # a character outside the alphabet is visible as <unk>, never dropped silently
    assert chars("1q2")["input_ids"] == [5, 3, 6]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(list(ALPHABET) + list(FORMAT_TAGS)), max_size=40))
def test_char_tokenizer_round_trips_exactly(chars, pieces):
    text = "".join(pieces)
    ids = chars(text)["input_ids"]
    assert chars.decode(ids) == text
    assert chars.decode(ids, skip_special_tokens=True) == text  # tags are not "special"


def test_char_tokenizer_save_and_load(chars, tmp_path):
    chars.save_pretrained(tmp_path)
    text = "<answer> 12 +\n 3 </answer>"
    expected = chars(text)["input_ids"]
    loaded = load_tokenizer(tmp_path)
    assert loaded(text)["input_ids"] == expected
    assert loaded.decode(expected) == text
    assert (loaded.pad_token_id, loaded.eos_token_id) == (0, 2)
    bare = load_tokenizer(tmp_path / "tokenizer.json")
    assert bare(text)["input_ids"] == expected
    assert bare.decode(expected) == text
    # Beside a model's config.json (an exported quick-start model: model_type qwen2), transformers'
    # AutoTokenizer would load Qwen2Tokenizer and replace the pre-tokenizer (spaces dropped).
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    beside_model = load_tokenizer(tmp_path)
    assert beside_model(text)["input_ids"] == expected
    assert beside_model.decode(expected) == text


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="vocab.txt"):
        load_tokenizer(tmp_path / "vocab.txt")


def test_encode_prompts_left_pads(chars):
    tokens, mask = encode_prompts(chars, ["1+2", "12+34", ""], max_length=6)
    plus = 4 + ALPHABET.index("+")
    assert tokens.dtype == np.int32 and mask.dtype == np.int32
    np.testing.assert_array_equal(tokens, [[0, 0, 0, 5, plus, 6],
                                           [0, 5, 6, plus, 7, 8],
                                           [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 1],
                                         [0, 1, 1, 1, 1, 1],
                                         [0, 0, 0, 0, 0, 0]])


def test_encode_prompts_too_long(chars):
    with pytest.raises(ValueError, match=r"prompt 1 has 5 tokens > max_length=4"):
        encode_prompts(chars, ["1", "12345"], max_length=4)
    tokens, mask = encode_prompts(chars, ["1", "12345"], max_length=4, truncate=True)
    np.testing.assert_array_equal(tokens[1], [6, 7, 8, 9])  # the last 4 characters "2345"
    np.testing.assert_array_equal(mask[1], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(chars, ["1"], max_length=4, chat=True)
    with pytest.raises(ValueError, match="needs chat=True"):
        encode_prompts(chars, ["1"], max_length=4, system="be brief")


def test_decode_completions_stops_at_eos(chars):
    a, b, tag = 4 + ALPHABET.index("a"), 4 + ALPHABET.index("b"), len(chars) - 1  # tag: </answer>
    tokens = np.array([[a, b, 2, a, a],      # EOS inside the mask: text stops before it
                       [a, tag, b, b, b],    # masked-out tail is dropped
                       [0, 1, a, 2, 2]])     # pad / bos are special and skipped
    mask = np.array([[1, 1, 1, 1, 1],
                     [1, 1, 0, 0, 0],
                     [1, 1, 1, 1, 0]])
    assert decode_completions(chars, tokens, mask) == ["ab", "a</answer>", "a"]
    with pytest.raises(ValueError, match="must be equal"):
        decode_completions(chars, tokens, mask[:, :3])


@pytest.fixture(scope="module")
def qwen_dir(request):
    shared_data = request.getfixturevalue("shared_data")  # skips in a fresh clone
    path = shared_data.parent / "tokenizers" / "qwen3"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"needs the Qwen tokenizer at {path}")
    return path


def test_qwen_tokenizer_matches_llama_cpp_vectors(qwen_dir):
    tok = load_tokenizer(qwen_dir)
    inputs = (qwen_dir / "tests" / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8")
    outputs = (qwen_dir / "tests" / "ggml-vocab-qwen2.gguf.out").read_text(encoding="utf-8")
    cases = inputs.split("\n__ggml_vocab_test__\n")[:-1]  # the file ends with a separator
    expected = outputs.split("\n")[: len(cases)]
    assert len(cases) == 46
    for text, ids in zip(cases, expected):
        assert tok(text, add_special_tokens=False)["input_ids"] == [int(i) for i in ids.split()], text


def test_qwen_chat_template(qwen_dir):
    tok = load_tokenizer(qwen_dir)
    tokens, mask = encode_prompts(tok, ["What is 2+3?"], max_length=32, chat=True, system="Be brief.")
    n = int(mask.sum())
    text = tok.decode(tokens[0, -n:])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert tokens[0, -n] == 151644  # <|im_start|> (Qwen2.5 id)
    assert (mask[0, :-n] == 0).all() and (tokens[0, :-n] == tok.pad_token_id).all()
    # A sampled completion ending in <|im_end|> (the EOS) decodes to the answer alone.
    completion = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, 151643]
    assert decode_completions(tok, [completion], [[1, 1, 1]]) == ["5"]


def test_gguf_tokenizer(smollm2_gguf):
    from grpo_jax.weights import gguf_reader

    tok = load_tokenizer(smollm2_gguf)
    reader = gguf_reader(smollm2_gguf)  # parsed once per process: shared with the weights tests
    vocab = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tok) == len(vocab) == 49152
    assert tok.eos_token_id == reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2
    text = "What is 2+3? Answer with a number."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [vocab[i] for i in ids]
    assert "".join(vocab[i] for i in ids).replace("Ġ", " ") == text  # GPT-2 byte-level: Ġ is a space
    tokens, mask = encode_prompts(tok, [text], max_length=64, chat=True)
    n = int(mask.sum())
    assert tok.decode(tokens[0, -n:]).endswith(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
