"""The cold tier's side of an erasure.

The history archive's rewrite entry point is not on this branch's main yet:
``NoColdErasure`` is the hook's no-op adapter. The erasure record carries the
deadline (``cold_deadline``) by which the rewrite must have happened; wiring
the archive means replacing this adapter in svc_keys/app.py with one that
hands the account to the archive's rewrite queue.
"""

from __future__ import annotations

from datetime import datetime

import structlog

log = structlog.get_logger(__name__)


class NoColdErasure:
    """Implements ports.ColdErasure for a deployment without an archive."""

    async def schedule(self, *, account_id: str, erasure_id: str, deadline: datetime) -> None:
        log.info("cold_erasure_not_wired", erasure_id=erasure_id, deadline=deadline.isoformat())
