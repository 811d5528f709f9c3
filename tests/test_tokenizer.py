"""Tests of duolib.tokenizer: BPE training, save/load, hashing, labelled encoding, stream cache."""

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from duolib.data import tokenizer as T

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20,
    "def add(a, b):\n    return a + b\n\nclass Foo:\n    pass\n" * 20,
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "bpe"
    T.train_tokenizer(TEXTS, vocab_size=300, max_chars=5_000, out_dir=out)
    return out


def test_round_trip_and_from_pretrained(tok_dir):
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    assert tok.eos_token == T.EOS_TOKEN and tok.pad_token == T.PAD_TOKEN
    assert tok.eos_token_id == 0 and tok.pad_token_id == 1
    assert 258 < len(tok) <= 300
    for text in ["To be, or not to be", "def f(x):\n\treturn x ** 2  # ünïcödé 🙂", "   spaces  \n\n"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    loaded = T.load_tokenizer(tok_dir)
    assert loaded("question")["input_ids"] == tok("question")["input_ids"]
    assert loaded("question")["input_ids"] != loaded("quest")["input_ids"]


def test_vocab_too_small_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="at least 258"):
        T.train_tokenizer(TEXTS, vocab_size=200)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        T.load_tokenizer(tmp_path)


def test_max_chars_caps_training_text():
    assert "".join(T._capped(["abcdef", "ghij", "klm"], 8)) == "abcdefgh"
    assert list(T._capped(["ab", "", "c"], None)) == ["ab", "c"]


def test_hash_is_content_hash(tok_dir, tmp_path):
    h = T.tokenizer_hash(tok_dir)
    assert h == T.tokenizer_hash(tok_dir / "tokenizer.json") == T.tokenizer_hash(T.load_tokenizer(tok_dir))
    other = T.train_tokenizer(TEXTS[:1], vocab_size=300, out_dir=tmp_path / "other")
    assert T.tokenizer_hash(tmp_path / "other") != h
    assert T.tokenizer_hash(other) == T.tokenizer_hash(other)


def test_token_dtype():
    assert T.token_dtype(4096) == np.uint16 and T.token_dtype(65535) == np.uint16
    assert T.token_dtype(65536) == np.int32


def test_token_labels_skip_leading_space():
    text = "ab 12 c"
    char_labels = np.array([1, 1, 0, 2, 2, 0, 3], dtype=np.uint8)
    offsets = np.array([[0, 2], [2, 4], [4, 5], [5, 6], [6, 7]])  # "ab", " 1", "2", " ", "c"
    assert T.token_labels(offsets, char_labels, text).tolist() == [1, 2, 2, 0, 3]


def test_build_and_load_stream(tok_dir, tmp_path):
    tok = T.load_tokenizer(tok_dir)
    labels = [np.full(len(t), 2, np.uint8) for t in TEXTS]
    stream = T.build_stream(TEXTS, tok, tmp_path / "s", {"split": "train"}, char_labels=labels)
    assert isinstance(stream.tokens, np.memmap) and stream.tokens.dtype == np.uint16
    assert stream.labels.dtype == np.uint8 and len(stream.labels) == len(stream.tokens)
    eos = np.flatnonzero(np.asarray(stream.tokens) == 0)
    assert eos[0] == 0 and eos[-1] == len(stream) - 1 and len(eos) == len(TEXTS) + 1
    assert set(np.asarray(stream.labels)[eos]) == {0} and (np.asarray(stream.labels) == 2).sum() == len(stream) - 3
    assert tok.decode(np.asarray(stream.tokens[1:eos[1]]).tolist()) == TEXTS[0]
    assert stream.meta["n_tokens"] == len(stream) and stream.meta["n_docs"] == 2
    assert not list(tmp_path.glob(".*tmp"))  # temp files renamed away
    assert T.load_stream(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="no documents"):
        T.build_stream([], tok, tmp_path / "e", {"split": "train"})
