"""tools/text_corpus.py: real sentences of different kinds from what is installed, the same
on every call, in disjoint sets (the held-out benchmark's data)."""

from __future__ import annotations

import pytest
import text_corpus


@pytest.mark.parametrize("kind", ["reference", "licenses"])
def test_sentences_are_deterministic_prose(kind):
    found = text_corpus.sentences(kind)
    assert len(found) >= 300
    assert found == text_corpus.sentences(kind)
    assert len({s.lower() for s in found}) == len(found)
    for sentence in found:
        words = sentence.split()
        assert text_corpus.MIN_WORDS <= len(words) <= text_corpus.MAX_WORDS
        assert sentence[0].isupper() and sentence[-1] in ".!?"
        assert ">>>" not in sentence and "::" not in sentence


def test_split_is_disjoint_and_seeded():
    first, second = text_corpus.split("reference", [100, 200], seed=3)
    assert len(first) == 100 and len(second) == 200 and not set(first) & set(second)
    assert text_corpus.split("reference", [100], seed=3)[0] == first
    assert text_corpus.split("reference", [100], seed=4)[0] != first
    with pytest.raises(ValueError, match="available"):
        text_corpus.split("licenses", [10**6])


def test_paragraphs_are_long_and_kinds_are_checked():
    passages = text_corpus.paragraphs("reference", 5, words=120)
    assert len(passages) == 5 and all(len(p.split()) >= 120 for p in passages)
    assert passages == text_corpus.paragraphs("reference", 5, words=120)
    with pytest.raises(ValueError, match="unknown text kind"):
        text_corpus.sentences("poetry")
