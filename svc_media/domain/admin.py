"""Operators' actions: quarantining a ciphertext hash and lifting it, each
audited with the operator credential's name."""

from __future__ import annotations

import uuid

from svc_media.domain.decisions import DownloadDecisions
from svc_media.model import AuditAction, AuditEvent, QuarantineEntry
from svc_media.ports import AuditLog, Quarantine


def _event_id(now: float) -> str:
    # Sortable by time first, unique after: ties in one millisecond keep an order.
    return f"{int(now * 1000):013d}-{uuid.uuid4().hex[:12]}"


class AdminHandler:
    def __init__(
        self,
        *,
        quarantine: Quarantine,
        audit: AuditLog,
        decisions: DownloadDecisions | None = None,
    ) -> None:
        self._quarantine = quarantine
        self._audit = audit
        self._decisions = decisions

    async def quarantine(
        self, *, sha256: bytes, reason: str, operator: str, now: float
    ) -> QuarantineEntry:
        # BSON dates hold milliseconds: answer with what a later read returns.
        at = int(now * 1000) / 1000
        entry, created = await self._quarantine.add(
            QuarantineEntry(sha256=sha256, reason=reason, operator=operator, created_at=at)
        )
        if self._decisions is not None:
            # Downloads this process decided before are asked again.
            self._decisions.forget_all()
        if created:
            await self._audit.record(
                AuditEvent(_event_id(now), AuditAction.QUARANTINE, sha256, reason, operator, at)
            )
        return entry

    async def lift(self, *, sha256: bytes, reason: str, operator: str, now: float) -> bool:
        removed = await self._quarantine.remove(sha256)
        if removed:
            at = int(now * 1000) / 1000
            await self._audit.record(
                AuditEvent(
                    _event_id(now), AuditAction.LIFT_QUARANTINE, sha256, reason, operator, at
                )
            )
        return removed

    async def events(self, *, before: tuple[float, str] | None, limit: int) -> list[AuditEvent]:
        return await self._audit.page(before=before, limit=limit)
