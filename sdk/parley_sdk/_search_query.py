"""The pure parts of the device's search: FTS5 expressions, page tokens, compact keys."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Sequence

from parley_sdk.search_text import Query, QueryError, document_terms

__all__ = [
    "DEFAULT_SEARCH_PAGE_SIZE",
    "MAX_SEARCH_PAGE_SIZE",
    "clamp_page_size",
    "decode_page_token",
    "encode_page_token",
    "fts_terms",
    "match_expression",
    "message_id_of",
    "message_key",
    "query_key",
    "scope_term",
]

DEFAULT_SEARCH_PAGE_SIZE = 20
MAX_SEARCH_PAGE_SIZE = 100

_FOREIGN_TOKEN = "page_token is not a token this index issued"


def scope_term(conversation_id: str) -> str:
    """The term naming a conversation in the FTS table (hex: one word to the tokenizer)."""
    return "c" + hashlib.blake2b(conversation_id.encode(), digest_size=8).hexdigest()


def fts_terms(text: str) -> str:
    """The FTS column value for ``text``: its terms, space separated."""
    terms = document_terms(text)
    return " ".join(terms.positional + terms.alternates)


def _phrase(terms: Sequence[str], *, prefix: bool) -> str:
    # Punctuation never makes a term, but a quote inside must not end the string.
    quoted = " ".join(terms).replace('"', '""')
    return f'terms : "{quoted}"' + (" *" if prefix else "")


def match_expression(parsed: Query, conversation_id: str | None) -> str:
    """The FTS5 MATCH expression: each term's spellings ORed, the terms ANDed,
    limited to the conversation's scope term when one is given."""
    clauses = [
        "(" + " OR ".join(_phrase(a, prefix=term.prefix) for a in term.alternatives) + ")"
        for term in parsed.terms
    ]
    if conversation_id:
        clauses.append(f'scope : "{scope_term(conversation_id)}"')
    return " AND ".join(clauses)


def clamp_page_size(requested: int | None) -> int:
    """AIP-158: 0 or None is the default, above the maximum is the maximum."""
    if requested is None or requested == 0:
        return DEFAULT_SEARCH_PAGE_SIZE
    if requested < 0:
        raise QueryError("page_size must not be negative", field="page_size")
    return min(requested, MAX_SEARCH_PAGE_SIZE)


def query_key(query: str, conversation_id: str | None) -> str:
    """What a page token is bound to: the query and the conversation."""
    digest = hashlib.sha256(f"{query}\x00{conversation_id or ''}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode()


def encode_page_token(key: str, before: int) -> str:
    raw = json.dumps({"k": key, "b": before}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, key: str) -> int:
    """The document id the next page starts below; QueryError naming
    ``page_token`` when it is not one of ours or belongs to another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fields = json.loads(raw)
        before = fields["b"]
        same_query = fields["k"] == key
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise QueryError(_FOREIGN_TOKEN, field="page_token") from None
    if not same_query:
        raise QueryError("page_token belongs to another query or conversation", field="page_token")
    if not isinstance(before, int) or isinstance(before, bool):
        raise QueryError(_FOREIGN_TOKEN, field="page_token")
    return before


def message_key(message_id: str) -> bytes | str:
    """A message id as stored: a canonical UUID as its 16 bytes (a third of the
    text), anything else as it is. SQLite never finds a text equal to a blob,
    so the two forms cannot collide."""
    try:
        parsed = uuid.UUID(message_id)
    except ValueError:
        return message_id
    return parsed.bytes if str(parsed) == message_id else message_id


def message_id_of(key: bytes | str) -> str:
    return str(uuid.UUID(bytes=key)) if isinstance(key, bytes) else key
