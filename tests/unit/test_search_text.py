"""The search normaliser: what a text is indexed under and what a query asks for
(parley_sdk.search_text, shared by the device index and a future blind index)."""

from __future__ import annotations

import unicodedata

import pytest

from parley_sdk.search_text import (
    MAX_QUERY_TERMS,
    MAX_TOKEN_CHARS,
    NORMALISER_VERSION,
    QueryError,
    QueryTerm,
    document_terms,
    fold,
    highlight_spans,
    parse_query,
    snippet,
)


@pytest.mark.parametrize(
    ("written", "folded"),
    [
        ("Café", "cafe"),
        ("CAFÉ", "cafe"),
        ("cafe\u0301", "cafe"),  # decomposed e + combining acute
        ("Straße", "strasse"),
        ("Søren", "soren"),
        ("Łódź", "lodz"),
        ("cœur", "coeur"),
        ("ＡＢＣ１２", "abc12"),  # noqa: RUF001 (full-width on purpose)
        ("İstanbul", "istanbul"),
        ("が", "が"),  # kana voicing marks are kept
        ("ｶﾞ", "ガ"),  # half-width kana become full-width
        ("ﬁne", "fine"),
    ],
)
def test_folding_drops_case_width_and_diacritics(written: str, folded: str) -> None:
    assert fold(written) == folded


def test_words_split_at_punctuation_symbols_and_emoji() -> None:
    assert document_terms("pizza🍕tonight, e-mail me!").positional == (
        "pizza",
        "tonight",
        "e",
        "mail",
        "me",
    )
    assert document_terms("👍🏽 ✅ ...").positional == ()
    # A keycap emoji leaves its digit, a variation selector nothing.
    assert document_terms("1\ufe0f\u20e3 go\ufe0f").positional == ("1", "go")


@pytest.mark.parametrize(
    ("written", "parts", "joined"),
    [
        ("l'arbre", ("l", "arbre"), "larbre"),
        ("d\u2019eau", ("d", "eau"), "deau"),
        ("qu'il", ("qu", "il"), "quil"),
        ("aujourd'hui", ("aujourd", "hui"), "aujourdhui"),
        ("dell'Italia", ("dell", "italia"), "dellitalia"),
    ],
)
def test_elision_indexes_the_parts_and_the_joined_word(
    written: str, parts: tuple[str, ...], joined: str
) -> None:
    terms = document_terms(written)
    assert terms.positional == parts
    assert terms.alternates == (joined,)


def test_a_quote_at_a_word_edge_is_not_elision() -> None:
    assert document_terms("'quoted' rock'n'roll'").positional == (
        "quoted",
        "rock",
        "n",
        "roll",
    )


def test_umlauts_are_indexed_both_ways() -> None:
    terms = document_terms("Müller Größe Mueller")
    assert terms.positional == ("muller", "grosse", "mueller")
    assert terms.alternates == ("mueller", "groesse")


def test_unspaced_runs_are_characters_and_overlapping_pairs() -> None:
    assert document_terms("北京出差").positional == ("北", "北京", "京", "京出", "出", "出差", "差")
    # Mixed scripts inside one written word are separate pieces.
    assert document_terms("iPhone用户2024年").positional == (
        "iphone",
        "用",
        "用户",
        "户",
        "2024",
        "年",
    )
    # A spaced Korean sentence: each eojeol is a run of its own.
    assert document_terms("서울에서 만나요").positional == (
        "서",
        "서울",
        "울",
        "울에",
        "에",
        "에서",
        "서",
        "만",
        "만나",
        "나",
        "나요",
        "요",
    )


def test_a_query_run_is_the_phrase_of_its_pairs() -> None:
    assert parse_query("北京").terms == (QueryTerm((("北京",),)),)
    assert parse_query("北京出").terms == (QueryTerm((("北京", "京", "京出"),)),)
    assert parse_query("天").terms == (QueryTerm((("天",),)),)
    # A prefix star means nothing inside an unspaced run.
    assert parse_query("北京*").terms == (QueryTerm((("北京",),)),)


def test_query_terms_are_anded_with_their_spellings() -> None:
    parsed = parse_query("Müller l'arbre hel* café")
    assert parsed.terms == (
        QueryTerm((("muller",), ("mueller",))),
        QueryTerm((("larbre",), ("l", "arbre"))),
        QueryTerm((("hel",),), prefix=True),
        QueryTerm((("cafe",),)),
    )


def test_quoted_words_are_a_phrase() -> None:
    assert parse_query('"new york" pizza').terms == (
        QueryTerm((("new", "york"),)),
        QueryTerm((("pizza",),)),
    )
    # An unclosed quote runs to the end.
    assert parse_query('"new york').terms == (QueryTerm((("new", "york"),)),)


def test_queries_without_words_or_too_long_are_refused() -> None:
    for query in ("", "   ", "🍕 !!", '""'):
        with pytest.raises(QueryError) as caught:
            parse_query(query)
        assert caught.value.field == "query"
    with pytest.raises(QueryError):
        parse_query("x" * 600)
    with pytest.raises(QueryError):
        parse_query(" ".join(f"w{i}" for i in range(MAX_QUERY_TERMS + 1)))
    # Repeated words count once.
    assert len(parse_query(" ".join(["same"] * 40)).terms) == 1


def test_long_words_are_cut_the_same_on_both_sides() -> None:
    word = "a" * 200
    assert document_terms(word).positional == ("a" * MAX_TOKEN_CHARS,)
    assert parse_query(word).terms == (QueryTerm((("a" * MAX_TOKEN_CHARS,),)),)


def test_highlights_point_at_the_written_text() -> None:
    text = "Herr Müller fährt nach 北京 wegen l'arbre, hello!"
    spans = highlight_spans(text, parse_query("mueller 北京 arbre hel*"))
    assert [text[s:e] for s, e in spans] == ["Müller", "北京", "l'arbre", "hello"]
    # Only the run is marked inside a longer unspaced sentence.
    sentence = "我明天去北京出差"
    spans = highlight_spans(sentence, parse_query("北京"))
    assert [sentence[s:e] for s, e in spans] == ["北京"]


def test_a_snippet_is_one_line_around_the_first_match() -> None:
    text = "word " * 40 + "the needle\nis here " + "tail " * 40
    spans = highlight_spans(text, parse_query("needle"))
    cut = snippet(text, spans, width=60, marks=("<", ">"))
    assert "<needle>" in cut
    assert "\n" not in cut
    assert cut.startswith("…") and cut.endswith("…")
    assert len(cut) <= 60 + 2 + 2
    short = snippet("hello world", highlight_spans("hello world", parse_query("world")))
    assert short == "hello [world]"


def test_the_version_names_the_unicode_data() -> None:
    assert NORMALISER_VERSION.endswith(unicodedata.unidata_version)
