"""The pure parts of a server search: which terms to ask for, fixed-shape requests, checks.

A request always has the deployment's ``groups_per_query`` groups of
``tokens_per_group`` tokens (the server refuses any other shape). A real
group names a (conversation, epoch key) the user searches and holds the
tokens of up to ``tokens_per_group`` query terms, filled up with the epoch's
filler tokens (every message carries them, so the AND is unchanged). The
other groups are decoys: a (conversation, key) drawn from all the keys this
device holds, a random number of its fillers and random tokens, in random
order among the real ones. The request is padded to a size bucket. Decoy
tokens match nothing (but by the chance a false positive has), and every hit
is checked against the decrypted text before it is shown.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from parley.search.v1 import search_pb2
from parley_sdk._blind_tokens import (
    BlindSettings,
    EpochKey,
    Randomness,
    filler_tokens,
    random_tokens,
    term_token,
)
from parley_sdk.search_text import Query, QueryError, document_terms

__all__ = [
    "MAX_CONJUNCTIONS",
    "build_requests",
    "decoy_group",
    "pad_request",
    "plan_query",
    "real_group",
    "request_bucket",
    "text_matches",
]

MAX_CONJUNCTIONS = 4
"""At most this many spellings of a query (``Müller`` asks for ``muller`` or
``mueller``) become groups of their own; past it, each word keeps one."""
_SMALLEST_REQUEST = 512
# SearchRequest.padding is field 4, length-delimited: a one-byte tag.
_PADDING_TAG_SIZE = 1


def plan_query(query: Query, tokens_per_group: int) -> tuple[tuple[str, ...], ...]:
    """The term sets to ask the server for, each an AND of at most
    ``tokens_per_group`` terms; a message matching the query matches one of them.

    A term's spellings (ORed) multiply into one set each while there are at
    most MAX_CONJUNCTIONS; a phrase asks for its terms (their order is checked
    after decrypting). Past ``tokens_per_group`` terms a set keeps the longest
    (likely the rarest); the rest is checked after decrypting. Prefixes
    cannot be asked of a blind index: QueryError.
    """
    if any(term.prefix for term in query.terms):
        raise QueryError("a server search cannot match prefixes (hel*); search the device instead")
    choices = [term.alternatives for term in query.terms]
    combos = 1
    for alternatives in choices:
        combos *= len(alternatives)
    if combos > MAX_CONJUNCTIONS:
        # The first spelling is the one the normaliser indexes for every form.
        choices = [alternatives[:1] for alternatives in choices]
    planned: dict[tuple[str, ...], None] = {}
    for picked in itertools.product(*choices):
        terms = list(dict.fromkeys(t for alternative in picked for t in alternative))
        if len(terms) > tokens_per_group:
            ranked = sorted(terms, key=lambda t: (-len(t), terms.index(t)))
            terms = ranked[:tokens_per_group]
        planned.setdefault(tuple(sorted(terms)), None)
    return tuple(planned)


def real_group(
    key: EpochKey, terms: Sequence[str], settings: BlindSettings, rng: Randomness
) -> search_pb2.TokenGroup:
    """A group asking ``key``'s epoch for messages holding every one of ``terms``."""
    if not 1 <= len(terms) <= settings.tokens_per_group:
        raise ValueError("a group holds 1 to tokens_per_group terms")
    real = list(dict.fromkeys(term_token(key, term) for term in terms))
    fillers = [t for t in filler_tokens(key, settings.fillers) if t not in real]
    tokens = real + fillers[: settings.tokens_per_group - len(real)]
    rng.shuffle(tokens)
    return search_pb2.TokenGroup(
        conversation_id=key.conversation_id, key_id=key.key_id, tokens=tokens
    )


def decoy_group(key: EpochKey, settings: BlindSettings, rng: Randomness) -> search_pb2.TokenGroup:
    """A group of ``key``'s form that asks for nothing: as many random tokens
    as a real group has real terms (drawn uniformly), the rest fillers."""
    size = settings.tokens_per_group
    fake = rng.randrange(1, size + 1)
    fillers = filler_tokens(key, size - fake)
    tokens = fillers + random_tokens(key.token_bytes, fake, rng, avoid=fillers)
    rng.shuffle(tokens)
    return search_pb2.TokenGroup(
        conversation_id=key.conversation_id, key_id=key.key_id, tokens=tokens
    )


def request_bucket(size: int) -> int:
    """Requests are padded to the next power of two from 512 bytes."""
    bucket = _SMALLEST_REQUEST
    while bucket < size:
        bucket *= 2
    return bucket


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def pad_request(request: search_pb2.SearchRequest) -> search_pb2.SearchRequest:
    """``request`` with ``padding`` making it exactly its size bucket long."""
    request.ClearField("padding")
    size = request.ByteSize()
    target = request_bucket(size + _PADDING_TAG_SIZE + 2)
    while True:
        for length_size in (1, 2, 3):
            length = target - size - _PADDING_TAG_SIZE - length_size
            if length >= 1 and _varint_size(length) == length_size:
                request.padding = b"\x00" * length
                return request
        target = request_bucket(target + 1)


def build_requests(
    real: Sequence[search_pb2.TokenGroup],
    pool: Sequence[EpochKey],
    settings: BlindSettings,
    rng: Randomness,
) -> list[search_pb2.SearchRequest]:
    """The requests (one per ``groups_per_query`` real groups, at least one)
    carrying ``real`` with decoys drawn from ``pool`` in the free places, each
    group in a random place. ``pool`` must not be empty."""
    if not pool:
        raise ValueError("decoys need at least one key")
    per = settings.groups_per_query
    batches = [list(real[i : i + per]) for i in range(0, len(real), per)] or [[]]
    requests = []
    for batch in batches:
        groups = batch + [
            decoy_group(pool[rng.randrange(0, len(pool))], settings, rng)
            for _ in range(per - len(batch))
        ]
        order = list(range(per))
        _shuffle_ints(order, rng)
        request = search_pb2.SearchRequest(groups=[groups[i] for i in order])
        requests.append(request)
    return requests


def _shuffle_ints(values: list[int], rng: Randomness) -> None:
    # Fisher-Yates with randrange, so one Randomness serves tokens and places.
    for i in range(len(values) - 1, 0, -1):
        j = rng.randrange(0, i + 1)
        values[i], values[j] = values[j], values[i]


def text_matches(text: str, query: Query) -> bool:
    """Whether ``text`` matches ``query`` as the device's index would (every
    term, in one of its spellings; a phrase's terms in a row): what a hit of
    the blind index must pass, since tokens are short enough to collide."""
    terms = document_terms(text)
    positional = terms.positional
    every = terms.all()
    for term in query.terms:
        if not any(
            _holds(alternative, positional, every, prefix=term.prefix)
            for alternative in term.alternatives
        ):
            return False
    return True


def _holds(
    wanted: tuple[str, ...],
    positional: tuple[str, ...],
    every: frozenset[str],
    *,
    prefix: bool,
) -> bool:
    if len(wanted) == 1:
        if prefix:
            return any(t.startswith(wanted[0]) for t in every)
        return wanted[0] in every
    size = len(wanted)
    for start in range(len(positional) - size + 1):
        window = positional[start : start + size]
        if window[:-1] == wanted[:-1] and (
            window[-1].startswith(wanted[-1]) if prefix else window[-1] == wanted[-1]
        ):
            return True
    return False
