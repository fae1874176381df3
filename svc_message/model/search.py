"""What svc_search asks svc_message about its postings (internal.proto,
CheckSearchMessages): records exchanged by the domain and the servicer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# CheckSearchMessagesRequest sizes: a Search page's candidates (groups x
# (page + 1)) fit in one call.
MAX_CHECKED_CONVERSATIONS = 64
MAX_CHECKED_MESSAGES = 512


@dataclass(frozen=True, slots=True)
class SearchConversation:
    conversation_id: str
    server_search: bool
    # The account is or was a member.
    searchable: bool


@dataclass(frozen=True, slots=True)
class SearchMessage:
    message_id: str
    conversation_id: str
    sender_account_id: str
    seq: int
    created_at: datetime
    deleted: bool
    readable: bool


@dataclass(frozen=True, slots=True)
class SearchCheck:
    conversations: tuple[SearchConversation, ...]
    messages: tuple[SearchMessage, ...]
