"""Plain data shared by svc_search's layers.

The server never sees a word: a posting is (conversation, key_id, token) ->
message, where token is a truncated HMAC the SDK made with the
conversation's epoch key (named by key_id) and the message's time and seq.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parley_core.histogram import LATENCY_BOUNDS, Histogram

KEY_ID_BYTES = 16
# A hit's position in a result list, newest first: (send time ms, message
# id, -group index) compared descending.
Position = tuple[int, str, int]


@dataclass(frozen=True, slots=True)
class Shape:
    """The deployment's query shape and token limits (SearchSettings)."""

    groups_per_query: int
    tokens_per_group: int
    min_token_bytes: int
    max_token_bytes: int
    max_tokens_per_message: int


@dataclass(frozen=True, slots=True)
class Group:
    conversation_id: str
    key_id: bytes
    # Distinct, in first order: a group's AND ignores repeats.
    tokens: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Posting:
    message_id: str
    at_ms: int
    seq: int


@dataclass(frozen=True, slots=True)
class Carried:
    """The tokens one indexed message carries, under its conversation and key."""

    conversation_id: str
    key_id: bytes
    tokens: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class TokenStats:
    """One token's postings ever added (an upper bound) and the first and
    last hour (send time ms // the bucket width) that held any."""

    postings: int
    first_hour: int
    last_hour: int


@dataclass(frozen=True, slots=True)
class Candidate:
    group_index: int
    conversation_id: str
    posting: Posting

    @property
    def position(self) -> Position:
        return (self.posting.at_ms, self.posting.message_id, -self.group_index)


@dataclass(frozen=True, slots=True)
class GroupScan:
    """One group's candidates newer than the page's start, newest first, and
    how far down its scan is complete: every candidate at or above
    ``frontier`` is in ``candidates``; None means the group has no more."""

    candidates: tuple[Candidate, ...]
    frontier: Position | None


@dataclass(frozen=True, slots=True)
class ConversationState:
    conversation_id: str
    server_search: bool
    searchable: bool


@dataclass(frozen=True, slots=True)
class MessageState:
    message_id: str
    conversation_id: str
    sender_account_id: str
    seq: int
    at_ms: int
    deleted: bool
    readable: bool


@dataclass(frozen=True, slots=True)
class Check:
    """svc_message's answer about some conversations and messages."""

    conversations: dict[str, ConversationState] = field(default_factory=dict)
    messages: dict[str, MessageState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    group_index: int
    conversation_id: str
    message_id: str
    seq: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class Page:
    hits: tuple[Hit, ...]
    # Where the next page starts (exclusive); None: no more.
    next_position: Position | None


@dataclass(slots=True)
class SearchStats:
    """Plain counters the metrics collector reads at scrape time."""

    queries: int = 0
    query_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    hits: int = 0
    index_requests: int = 0
    postings_written: int = 0
    removals: int = 0
    refused_disabled: int = 0
    refused_not_sender: int = 0
    dropped_conversations: int = 0
    dropped_deleted: int = 0
    erased_accounts: int = 0
    # Posting buckets stored (one per token and hour), counted by the
    # sweeper's loop (an estimate: collection metadata).
    postings: int = 0
