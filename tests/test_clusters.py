"""Holdout windows know the work or file they were cut from (the cluster bootstrap's labels)."""

import re
from collections import Counter

import numpy as np
import pytest

from duolib.data import batches as B
from duolib.data import clusters as C
from duolib.data import corpus as D

SMALL = dict(vocab_size=300, tokenizer_chars=60_000, progress=False)


def test_window_documents_by_majority_on_a_constructed_stream():
    # eos = 9: documents 0 (3 tokens), 1 (5 tokens), 2 (2 tokens)
    tokens = np.array([9, 1, 1, 1, 9, 2, 2, 2, 2, 2, 9, 3, 3, 9])
    assert C.window_documents(tokens, 9, [0, 4, 8, 10], 4).tolist() == [0, 1, 1, 2]
    assert C.window_documents(tokens, 9, [2], 4).tolist() == [0]  # tokens 1 1 | 9 2: a tie goes to the earlier
    with pytest.raises(ValueError, match="starts with the separator"):
        C.window_documents(tokens[1:], 9, [0], 4)


def test_holdout_windows_name_the_work_whose_text_they_hold(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(6):  # each work repeats its own marker word, several 4 KB blocks long
        (root / f"work{i}.txt").write_text("".join(f"marker{i} line {j} of work {i}\n" for j in range(900)))
    data = D.prepare(f"text:{root}", cache_dir=tmp_path / "cache", holdout_fraction=0.3, **SMALL)
    docs = C.holdout_documents(data, "text")
    assert len(docs) == data.holdout["text"].meta["n_docs"] and all("#" in d for d in docs)
    works = C.holdout_window_works(data, 40, 64)["text"]
    ids = B.holdout_sequences(data.holdout["text"], 40, 64)
    assert len(works) == len(ids) and len(set(works)) > 2
    for row, work in zip(ids, works):
        text = data.tokenizer.decode(row.tolist())
        marker = Counter(re.findall(r"marker(\d)", text)).most_common(1)[0][0]
        assert work == f"text/work{marker}.txt", (work, text[:80])


def test_a_stream_that_no_longer_matches_its_split_is_refused(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(3):
        (root / f"w{i}.txt").write_text("".join(f"w{i} line {j}\n" for j in range(900)))
    data = D.prepare(f"text:{root}", cache_dir=tmp_path / "cache", holdout_fraction=0.3, **SMALL)
    (root / "w3.txt").write_text("".join(f"new line {j}\n" for j in range(900)))  # the corpus changed since
    with pytest.raises(ValueError, match="rebuild the token cache"):
        C.holdout_documents(data, "text")


def test_the_mixed_corpus_windows_name_english_works_and_python_files(tmp_path):
    data = D.prepare("mix", cache_dir=tmp_path, max_docs=3, **{**SMALL, "tokenizer_chars": 20_000})
    works = C.holdout_window_works(data, 8, 32)
    assert set(works) == {"english", "python"}
    assert all(w.startswith("english/") for w in works["english"]) and all(w.startswith("python/") for w in works["python"])
    assert all("#" not in w for ws in works.values() for w in ws)
