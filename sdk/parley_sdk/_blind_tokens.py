"""The pure parts of the server blind index: epoch keys, token length, message tokens.

A conversation's search key K lives for one epoch (docs/design/search.md). A
term's token is HMAC-SHA256(K, "t" || term) cut to the epoch's token length,
where the terms are exactly those the device's own index makes
(:func:`parley_sdk.search_text.document_terms`), so both modes find a word the
same way. Every message of an epoch also carries the epoch's filler tokens
(HMAC(K, "f" || i)): a query group with fewer real terms than the fixed group
size fills up with them, and they match every message, so the AND still
means what the user typed. A message's token count is padded with random
tokens to a bucket, so the count tells the server little about the text.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from parley.search.v1 import search_pb2
from parley_sdk.search_text import document_terms

__all__ = [
    "DEFAULT_FALSE_POSITIVES",
    "KEY_BYTES",
    "KEY_ID_BYTES",
    "MIN_EXPECTED_MESSAGES",
    "TOKENS_PER_MESSAGE_ESTIMATE",
    "BlindSettings",
    "EpochKey",
    "Randomness",
    "derive_key_id",
    "filler_tokens",
    "message_tokens",
    "padded_token_count",
    "random_tokens",
    "term_token",
    "token_bytes_for",
]

KEY_BYTES = 32
KEY_ID_BYTES = 16
_KEY_ID_LABEL = b"parley search key id"

DEFAULT_FALSE_POSITIVES = 0.01
"""Expected false hits of a one-word query over a whole epoch (see token_bytes_for)."""
MIN_EXPECTED_MESSAGES = 10_000
"""An epoch is sized for at least this many messages, so a young conversation
does not get tokens so short that it drowns in false positives as it grows."""
TOKENS_PER_MESSAGE_ESTIMATE = 64
"""Tokens an average message carries after padding (the bucket most chat lines land in)."""
_SMALLEST_BUCKET = 16


class Randomness(Protocol):
    """What the blind index draws at random (``random.SystemRandom`` in use; a
    seeded ``random.Random`` in tests)."""

    def randbytes(self, n: int, /) -> bytes: ...

    def randrange(self, start: int, stop: int, /) -> int: ...

    def shuffle(self, x: list[bytes], /) -> None: ...


@dataclass(frozen=True, slots=True)
class BlindSettings:
    """A deployment's query shape and token limits (SearchService.GetSearchSettings)."""

    groups_per_query: int
    tokens_per_group: int
    min_token_bytes: int
    max_token_bytes: int
    max_tokens_per_message: int

    @classmethod
    def from_proto(cls, settings: search_pb2.SearchSettings) -> BlindSettings:
        made = cls(
            groups_per_query=settings.groups_per_query,
            tokens_per_group=settings.tokens_per_group,
            min_token_bytes=settings.min_token_bytes,
            max_token_bytes=settings.max_token_bytes,
            max_tokens_per_message=settings.max_tokens_per_message,
        )
        if (
            made.groups_per_query < 1
            or made.tokens_per_group < 1
            or not 1 <= made.min_token_bytes <= made.max_token_bytes
            or made.max_tokens_per_message < made.tokens_per_group
        ):
            raise ValueError(f"the server's search settings are unusable: {made}")
        return made

    @property
    def fillers(self) -> int:
        """Filler tokens per message: enough to fill a group holding one real term."""
        return self.tokens_per_group - 1


def derive_key_id(key: bytes) -> bytes:
    """The 16 bytes naming a key to the server: they reveal nothing of K."""
    return hmac.digest(key, _KEY_ID_LABEL, hashlib.sha256)[:KEY_ID_BYTES]


@dataclass(frozen=True, slots=True)
class EpochKey:
    """One key of one epoch of a conversation's blind index."""

    conversation_id: str
    epoch_seq: int
    """The seq of the system message that started the epoch."""
    key: bytes
    token_bytes: int

    @property
    def key_id(self) -> bytes:
        return derive_key_id(self.key)


def token_bytes_for(
    expected_messages: int,
    settings: BlindSettings,
    *,
    tokens_per_message: int = TOKENS_PER_MESSAGE_ESTIMATE,
    false_positives: float = DEFAULT_FALSE_POSITIVES,
) -> int:
    """The shortest token length (bytes) for which a one-word query over an
    epoch of ``expected_messages`` messages of ``tokens_per_message`` tokens
    expects at most ``false_positives`` false hits.

    A token of L bytes equals another term's by chance with probability
    2^(-8L), so the expected false hits are N * T * 2^(-8L) <= f, that is
    L = ceil(log2(N * T / f) / 8), kept within the deployment's bounds. A
    query of k real terms multiplies the chance k times over, so one word is
    the worst case. Shorter tokens also collide more, which is all the
    server could exploit, so the length is no longer than this.
    """
    messages = max(expected_messages, MIN_EXPECTED_MESSAGES)
    bits = math.log2(messages * max(1, tokens_per_message) / false_positives)
    length = math.ceil(bits / 8)
    return min(max(length, settings.min_token_bytes), settings.max_token_bytes)


def term_token(key: EpochKey, term: str) -> bytes:
    return hmac.digest(key.key, b"t" + term.encode(), hashlib.sha256)[: key.token_bytes]


def filler_tokens(key: EpochKey, count: int) -> list[bytes]:
    """The epoch's tokens every one of its messages carries."""
    return [
        hmac.digest(key.key, b"f" + i.to_bytes(2, "big"), hashlib.sha256)[: key.token_bytes]
        for i in range(count)
    ]


def random_tokens(
    length: int, count: int, rng: Randomness, *, avoid: Iterable[bytes] = ()
) -> list[bytes]:
    """``count`` distinct random tokens (HMAC output looks the same), none in ``avoid``."""
    taken = set(avoid)
    out: list[bytes] = []
    while len(out) < count:
        token = rng.randbytes(length)
        if token not in taken:
            taken.add(token)
            out.append(token)
    return out


def padded_token_count(count: int, settings: BlindSettings) -> int:
    """The bucket a message with ``count`` tokens is padded to: the next power
    of two from 16, at most the deployment's cap."""
    bucket = _SMALLEST_BUCKET
    while bucket < count:
        bucket *= 2
    return min(bucket, settings.max_tokens_per_message)


def message_tokens(
    key: EpochKey, text: str, settings: BlindSettings, rng: Randomness
) -> list[bytes]:
    """What IndexMessage carries for ``text``: a token per distinct term, the
    epoch's fillers, random tokens up to the count's bucket, in random order.

    Past the cap, the terms written first are kept (the rest of a very long
    message is found only by the device's own index).
    """
    fillers = filler_tokens(key, settings.fillers)
    room = settings.max_tokens_per_message - len(fillers)
    terms = document_terms(text)
    real: dict[bytes, None] = {}
    for term in (*terms.positional, *terms.alternates):
        if len(real) >= room:
            break
        real.setdefault(term_token(key, term), None)
    tokens = list(dict.fromkeys([*fillers, *real]))
    target = padded_token_count(len(tokens), settings)
    tokens += random_tokens(key.token_bytes, target - len(tokens), rng, avoid=tokens)
    rng.shuffle(tokens)
    return tokens
