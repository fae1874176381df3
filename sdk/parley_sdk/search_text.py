"""How text becomes search terms: one normaliser for documents and queries.

The device's full-text index (:class:`parley_sdk.SearchIndex`) uses it, and a
server blind index must derive its tokens from the same terms, so a word is
found the same way by both. Everything here is pure and deterministic for one
:data:`NORMALISER_VERSION` (which includes the Unicode database version:
character categories change between Python releases, and an index built under
other rules must be rebuilt, not patched).

The rules:

- **Folding.** NFKD, casefold, combining marks dropped, a few letters that
  Unicode does not decompose folded by hand (``ø`` -> ``o``, ``ł`` -> ``l``,
  ``æ`` -> ``ae``...), then NFC: ``Café`` = ``cafe``, ``Straße`` = ``strasse``,
  full-width Latin = ``abc``. The kana voicing marks stay (``が`` is not ``か``).
- **Words** are runs of letters, digits and marks; everything else separates
  them (spaces, punctuation, symbols, emoji: ``pizza🍕tonight`` is two words).
- **Elision.** A word with apostrophes inside (``l'arbre``, ``qu'il``,
  ``aujourd'hui``, ``don't``) is indexed as its parts (``l``, ``arbre``) and as
  the parts joined (``larbre``), so either spelling of a query finds it.
- **German umlauts.** ``Müller`` is indexed as ``muller`` and ``mueller``; a
  query for ``Müller`` asks for either.
- **Unspaced scripts** (Han, Kana, Hangul, and Thai, Lao, Khmer, Myanmar):
  FTS5 would see a whole sentence as one token, so each run is indexed as its
  characters and its overlapping character pairs, interleaved
  (``北京出差`` -> ``北 北京 京 京出 出 出差 差``). A query run becomes the phrase
  of its pairs with the characters between them (``北京出`` -> ``北京 京 京出``),
  which matches exactly the runs that contain it; a single character matches
  through the unigrams.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_QUERY_CHARS",
    "MAX_QUERY_TERMS",
    "MAX_TOKEN_CHARS",
    "NORMALISER_VERSION",
    "DocumentTerms",
    "Query",
    "QueryError",
    "QueryTerm",
    "Run",
    "Word",
    "document_terms",
    "fold",
    "highlight_spans",
    "parse_query",
    "segment",
    "snippet",
]

NORMALISER_VERSION = f"1/unicode-{unicodedata.unidata_version}"
"""Changes whenever the same text could give other terms (rules or Unicode data)."""

MAX_TOKEN_CHARS = 64
"""Longer words are cut to this many characters (on both sides): a pasted key or
link should not bloat the index, and its first 64 characters still find it."""
MAX_QUERY_CHARS = 512
MAX_QUERY_TERMS = 16

_APOSTROPHES = frozenset("'\u2019\u02bc")
_APOSTROPHE_SPLIT = re.compile("['\u2019\u02bc]+")
# Whitespace always separates words, and ASCII words need no per-character look.
_CHUNK = re.compile(r"\S+")
_SPACE = re.compile(r"\s")
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z0-9]+)*")
# Kana voicing marks are meaning, not decoration: kept when marks are dropped.
_KEPT_MARKS = frozenset("\u3099\u309a")
# Letters NFKD leaves whole that readers treat as the base letter.
_LETTER_FOLDS = str.maketrans(
    {
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "ħ": "h",
        "ŧ": "t",
        "\u0131": "i",  # dotless i
        "ƀ": "b",
        "ƶ": "z",
        "æ": "ae",
        "œ": "oe",
        "þ": "th",
    }
)
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue"})

# Scripts written without spaces between words (code point ranges, inclusive).
_UNSPACED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK and Kangxi radicals
    (0x3005, 0x3007),  # iteration mark, closing mark, ideographic zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3031, 0x3035),  # kana repeat marks
    (0x3038, 0x303C),
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31A0, 0x31FF),  # Bopomofo extended, Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFFDC),  # half-width Katakana and Hangul
    (0x1B000, 0x1B16F),  # Kana supplement and extended
    (0x20000, 0x3134F),  # CJK extensions B-G
)


class QueryError(ValueError):
    """A search query that cannot be run (no words, or too long); ``field`` names
    the argument."""

    def __init__(self, message: str, *, field: str = "query") -> None:
        super().__init__(message)
        self.field = field


def _unspaced(char: str) -> bool:
    point = ord(char)
    if point < 0x0E00:
        return False
    return any(low <= point <= high for low, high in _UNSPACED_RANGES)


def _starts_word(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] in "LN" or category == "Co"


def _continues_word(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] in "LNM" or category == "Co"


def fold(text: str) -> str:
    """``text`` with case, compatibility forms and diacritics folded away."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    bare = "".join(
        c for c in decomposed if c in _KEPT_MARKS or not unicodedata.category(c).startswith("M")
    )
    return unicodedata.normalize("NFC", bare.translate(_LETTER_FOLDS))


@dataclass(frozen=True, slots=True)
class Word:
    """A word of a spaced script, as written at ``text[start:end]``.

    ``parts`` are its folded pieces between apostrophes (one for most words),
    indexed in order; ``alternates`` are its other spellings (the parts joined,
    the umlauts spelled out), indexed too.
    """

    start: int
    end: int
    parts: tuple[str, ...]
    alternates: tuple[str, ...]

    @property
    def forms(self) -> tuple[str, ...]:
        """Every spelling the word is found under."""
        return self.parts + self.alternates


@dataclass(frozen=True, slots=True)
class Run:
    """A run of an unspaced script: its folded characters and where each was written."""

    chars: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]

    @property
    def start(self) -> int:
        return self.spans[0][0]

    @property
    def end(self) -> int:
        return self.spans[-1][1]

    def tokens(self) -> list[str]:
        """Characters and the pairs between them, interleaved (what a document holds)."""
        chars = self.chars
        out = [chars[0]]
        for left, right in itertools.pairwise(chars):
            out += [left + right, right]
        return out

    def phrase(self) -> tuple[str, ...]:
        """The phrase a query for this run asks for: its pairs with the characters
        between them (one character: itself)."""
        tokens = self.tokens()
        return tuple(tokens[1:-1]) if len(tokens) > 1 else tuple(tokens)


def _cut(token: str) -> str:
    return token[:MAX_TOKEN_CHARS]


@functools.lru_cache(maxsize=32_768)
def _forms(written: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """A written word's parts and alternates (chat words repeat: cached)."""
    parts = tuple(_cut(p) for p in _APOSTROPHE_SPLIT.split(fold(written)) if p)
    if not parts:
        return None
    alternates: list[str] = []
    if len(parts) > 1:
        alternates.append(_cut("".join(parts)))
    lowered = unicodedata.normalize("NFC", written).casefold()
    if lowered.translate(_UMLAUTS) != lowered:
        spelled = _cut("".join(_APOSTROPHE_SPLIT.split(fold(lowered.translate(_UMLAUTS)))))
        alternates.append(spelled)
    return parts, tuple(a for a in dict.fromkeys(alternates) if a not in parts)


def _word(text: str, start: int, end: int) -> Word | None:
    forms = _forms(text[start:end])
    return None if forms is None else Word(start, end, *forms)


@functools.lru_cache(maxsize=16_384)
def _fold_char(char: str) -> str:
    return fold(char)


def _run(text: str, start: int, end: int) -> Run | None:
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    for index in range(start, end):
        folded = _fold_char(text[index])
        if not folded:
            continue
        if chars and all(unicodedata.category(c).startswith("M") for c in folded):
            # A separate voicing mark (half-width kana) belongs to the character before.
            chars[-1] = unicodedata.normalize("NFC", chars[-1] + folded)
            spans[-1] = (spans[-1][0], index + 1)
            continue
        chars.append(folded)
        spans.append((index, index + 1))
    if not chars:
        return None
    return Run(tuple(chars), tuple(spans))


def segment(text: str) -> Iterator[Word | Run]:
    """The words and unspaced runs of ``text``, in order."""
    for chunk in _CHUNK.finditer(text):
        start, end = chunk.span()
        if chunk.group().isascii():
            # Most chat words: letters and digits, maybe an apostrophe inside.
            for match in _ASCII_WORD.finditer(text, start, end):
                word = _word(text, match.start(), match.end())
                if word is not None:
                    yield word
        else:
            yield from _segment_chunk(text, start, end)


def _segment_chunk(text: str, start: int, end: int) -> Iterator[Word | Run]:
    index = start
    while index < end:
        if not _starts_word(text[index]):
            index += 1
            continue
        stop = index + 1
        while stop < end:
            char = text[stop]
            inner_apostrophe = (
                char in _APOSTROPHES and stop + 1 < end and _starts_word(text[stop + 1])
            )
            if not (_continues_word(char) or inner_apostrophe):
                break
            stop += 1
        yield from _split_scripts(text, index, stop)
        index = stop


def _split_scripts(text: str, start: int, end: int) -> Iterator[Word | Run]:
    """A word as written may mix spaced and unspaced scripts (``iPhone用户``):
    one piece per script, marks going with the character before them."""
    piece_start = start
    unspaced = _unspaced(text[start])
    for index in range(start + 1, end):
        char = text[index]
        if unicodedata.category(char).startswith("M") or char in _APOSTROPHES:
            continue
        if _unspaced(char) != unspaced:
            yield from _piece(text, piece_start, index, unspaced)
            piece_start, unspaced = index, not unspaced
    yield from _piece(text, piece_start, end, unspaced)


def _piece(text: str, start: int, end: int, unspaced: bool) -> Iterator[Word | Run]:
    piece = _run(text, start, end) if unspaced else _word(text, start, end)
    if piece is not None:
        yield piece


@dataclass(frozen=True, slots=True)
class DocumentTerms:
    """What a text is indexed under: ``positional`` in order (phrases match
    there), then ``alternates`` (other spellings, in no useful order)."""

    positional: tuple[str, ...]
    alternates: tuple[str, ...]

    def all(self) -> frozenset[str]:
        """Every distinct term (what a blind index would take a token of)."""
        return frozenset(self.positional) | frozenset(self.alternates)


def document_terms(text: str) -> DocumentTerms:
    positional: list[str] = []
    alternates: list[str] = []
    for piece in segment(text):
        if isinstance(piece, Run):
            positional += piece.tokens()
        else:
            positional += piece.parts
            alternates += piece.alternates
    return DocumentTerms(tuple(positional), tuple(dict.fromkeys(alternates)))


@dataclass(frozen=True, slots=True)
class QueryTerm:
    """One condition of a query: the text holds one of ``alternatives`` (each a
    sequence of terms in a row). With ``prefix``, the last term of each may be
    the start of a longer one."""

    alternatives: tuple[tuple[str, ...], ...]
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: every term must match (AND)."""

    terms: tuple[QueryTerm, ...]
    words: frozenset[str]
    """Folded spellings to highlight where a word equals one."""
    prefixes: frozenset[str]
    """Folded starts to highlight where a word begins with one."""
    runs: frozenset[str]
    """Unspaced runs (their folded characters joined) to highlight wherever they occur."""


def parse_query(query: str) -> Query:
    """Words are ANDed; ``"quoted words"`` must appear in a row; a trailing ``*``
    makes a word a prefix (``hel*``). Raises :class:`QueryError`."""
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"query is longer than {MAX_QUERY_CHARS} characters")
    terms: list[QueryTerm] = []
    words: set[str] = set()
    prefixes: set[str] = set()
    runs: set[str] = set()
    for chunk, quoted in _chunks(query):
        pieces = list(segment(chunk))
        for piece in pieces:
            if isinstance(piece, Run):
                runs.add("".join(piece.chars))
            else:
                # ``l'arbre`` highlights as a whole, not every lone ``l``.
                words.update(piece.forms if len(piece.parts) == 1 else piece.alternates)
        if quoted:
            phrase = _phrase(pieces)
            if phrase:
                terms.append(QueryTerm((phrase,)))
            continue
        prefix = chunk.endswith("*")
        for position, piece in enumerate(pieces):
            last_word = prefix and position == len(pieces) - 1 and isinstance(piece, Word)
            terms.append(_term(piece, prefix=last_word))
            if last_word and isinstance(piece, Word):
                prefixes.update(piece.forms if len(piece.parts) == 1 else piece.alternates)
    unique = tuple(dict.fromkeys(terms))
    if not unique:
        raise QueryError("query has no words to search for (only spaces, punctuation or emoji)")
    if len(unique) > MAX_QUERY_TERMS:
        raise QueryError(f"query has more than {MAX_QUERY_TERMS} words")
    return Query(unique, frozenset(words), frozenset(prefixes), frozenset(runs))


def _chunks(query: str) -> Iterator[tuple[str, bool]]:
    """Whitespace-separated words and double-quoted phrases (an unclosed quote
    runs to the end)."""
    for index, part in enumerate(query.split('"')):
        if index % 2:
            yield part, True
        else:
            for word in part.split():
                yield word, False


def _phrase(pieces: Sequence[Word | Run]) -> tuple[str, ...]:
    phrase: list[str] = []
    for piece in pieces:
        phrase += piece.tokens() if isinstance(piece, Run) else piece.parts
    return tuple(phrase)


def _term(piece: Word | Run, *, prefix: bool) -> QueryTerm:
    if isinstance(piece, Run):
        return QueryTerm((piece.phrase(),))
    alternatives: list[tuple[str, ...]] = [(form,) for form in piece.alternates]
    if len(piece.parts) == 1:
        alternatives.insert(0, piece.parts)
    else:
        # ``l'arbre``: the joined spelling (first alternate) or the parts in a row.
        alternatives.append(piece.parts)
    return QueryTerm(tuple(dict.fromkeys(alternatives)), prefix=prefix)


def highlight_spans(text: str, query: Query) -> list[tuple[int, int]]:
    """Where ``text`` matches ``query``, as sorted, non-overlapping (start, end)."""
    spans: list[tuple[int, int]] = []
    for piece in segment(text):
        if isinstance(piece, Word):
            forms = piece.forms
            if any(f in query.words for f in forms) or any(
                f.startswith(p) for f in forms for p in query.prefixes
            ):
                spans.append((piece.start, piece.end))
            continue
        joined = "".join(piece.chars)
        # Folded characters may be longer than one code point; map offsets back.
        owner = [i for i, c in enumerate(piece.chars) for _ in c]
        for wanted in query.runs:
            found = joined.find(wanted)
            while found >= 0 and wanted:
                first, last = owner[found], owner[found + len(wanted) - 1]
                spans.append((piece.spans[first][0], piece.spans[last][1]))
                found = joined.find(wanted, found + 1)
    return _merged(spans)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def snippet(
    text: str,
    spans: Sequence[tuple[int, int]],
    *,
    width: int = 80,
    marks: tuple[str, str] = ("[", "]"),
    ellipsis: str = "\u2026",
) -> str:
    """About ``width`` characters of ``text`` around its first match, on one
    line, matches wrapped in ``marks``; cut at spaces where one is near, with
    ``ellipsis`` where cut."""
    # Same length, so the spans still point at the same characters.
    flat = _SPACE.sub(" ", text)
    first_start, first_end = spans[0] if spans else (0, 0)
    start = max(0, first_start - width // 3)
    end = min(len(flat), start + width)
    start = max(0, min(start, end - width))
    if start > 0:
        space = flat.find(" ", start, first_start)
        if 0 <= space - start <= 15:
            start = space + 1
    if end < len(flat):
        space = flat.rfind(" ", max(first_end, end - 15), end)
        if space > 0:
            end = space
    out = [ellipsis if start > 0 else ""]
    cursor = start
    for span_start, span_end in spans:
        if span_end <= start or span_start >= end:
            continue
        span_start, span_end = max(span_start, start), min(span_end, end)
        out += [flat[cursor:span_start], marks[0], flat[span_start:span_end], marks[1]]
        cursor = span_end
    out += [flat[cursor:end], ellipsis if end < len(flat) else ""]
    return "".join(out)
