"""What svc_search's domain needs from other services."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from svc_search.model import Check


class Messages(Protocol):
    """svc_message's MessageInternalService.CheckSearchMessages: one call
    answers for a page of candidates."""

    async def check(
        self, account_id: str, conversation_ids: Sequence[str], message_ids: Sequence[str]
    ) -> Check: ...
