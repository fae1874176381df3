"""The cold tier's side of an erasure, as svc_keys sees it.

svc_message rewrites the account's archived history itself, inside
MessageInternalService.EraseAccount (svc_message/domain/erasure.py: each
conversation's Parquet chunks are rewritten through ``tombstone_sender``
before the conversation counts as erased), so by the time this step runs
there is nothing left to hand over. The erasure record keeps the deadline
(``cold_deadline``) the rewrite had to meet; this adapter only logs it.
"""

from __future__ import annotations

from datetime import datetime

import structlog

log = structlog.get_logger(__name__)


class NoColdErasure:
    """Implements ports.ColdErasure: svc_message's EraseAccount already rewrote
    the cold tier."""

    async def schedule(self, *, account_id: str, erasure_id: str, deadline: datetime) -> None:
        log.info(
            "cold_erasure_done_by_message_service",
            erasure_id=erasure_id,
            deadline=deadline.isoformat(),
        )
