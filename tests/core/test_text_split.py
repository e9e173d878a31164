"""Property tests for splitting long texts (hypothesis)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from omni_core.text import split_text

words = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=12)
separators = st.sampled_from([" ", "  ", "\n", "\n\n", ". ", "! ", "? ", ".\n\n", ", "])
texts = st.lists(st.tuples(words, separators), max_size=300).map(lambda pairs: "".join(w + s for w, s in pairs))
limits = st.integers(min_value=13, max_value=400)


@settings(max_examples=400, deadline=None)
@given(text=texts, limit=limits)
def test_parts_rejoin_fit_and_never_cut_words(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert "".join(parts) == text  # nothing lost, nothing reordered
    assert all(0 < len(p) <= limit for p in parts)
    for before, after in itertools.pairwise(parts):
        # Every word here is shorter than the limit, so no cut needs to land inside one.
        assert before[-1].isspace() or after[0].isspace(), (before[-20:], after[:20])


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=3000), limit=st.integers(min_value=1, max_value=500))
def test_any_text_rejoins_and_fits(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert "".join(parts) == text
    assert all(0 < len(p) <= limit for p in parts)


def test_prefers_paragraphs_then_sentences() -> None:
    first = "Primeiro parágrafo com várias palavras. " * 3
    second = "Segundo parágrafo, também longo o bastante. " * 3
    parts = split_text(first.strip() + "\n\n" + second.strip(), 150)
    assert parts[0].endswith("\n\n") and parts[0].startswith("Primeiro")
    sentences = split_text("Uma frase curta. Outra frase aqui. E mais uma frase final longa demais", 40)
    assert sentences[0] == "Uma frase curta. Outra frase aqui. "


def test_short_text_is_one_part_and_empty_is_none() -> None:
    assert split_text("olá", 10) == ["olá"]
    assert split_text("", 10) == []


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    assert split_text("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]


def test_emoji_sequences_are_not_split_from_their_modifiers() -> None:
    thumbs = "👍🏽"  # thumbs up + skin tone modifier
    parts = split_text("x" * 9 + thumbs, 10)
    assert parts == ["x" * 9, thumbs]


@settings(max_examples=200, deadline=None)
@given(text=texts, limit=limits)
def test_sending_parts_are_trimmed_and_keep_every_visible_character(text: str, limit: int) -> None:
    from omni_core.text import split_for_sending

    parts = split_for_sending(text, limit)
    assert all(p and p == p.strip() and len(p) <= limit for p in parts)
    visible = "".join(ch for ch in text if not ch.isspace())
    assert "".join(ch for p in parts for ch in p if not ch.isspace()) == visible
