"""parley.presence.v1.PresenceService over gRPC."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from parley.presence.v1 import presence_pb2 as pb
from parley.presence.v1 import presence_pb2_grpc
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.convert import timestamp
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_presence.domain.presence import PresenceHandler
from svc_presence.domain.subscriptions import Hub, stream
from svc_presence.model import Contact, PresenceSettings, PresenceView, Visibility

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PresenceService"].full_name
MAX_ACCOUNT_IDS = 256
CONTACTS_PAGE_DEFAULT = 100
CONTACTS_PAGE_MAX = 1000
VISIBILITIES = frozenset(int(v) for v in Visibility)


def presence_proto(view: PresenceView) -> pb.Presence:
    message = pb.Presence(account_id=view.account_id, availability=int(view.availability))  # type: ignore[arg-type]
    if view.last_seen_ms is not None:
        message.last_seen_time.FromMilliseconds(view.last_seen_ms)
    return message


def settings_proto(settings: PresenceSettings) -> pb.PresenceSettings:
    message = pb.PresenceSettings(
        online=int(settings.online),  # type: ignore[arg-type]
        last_seen=int(settings.last_seen),  # type: ignore[arg-type]
        invisible=settings.invisible,
    )
    if settings.updated_at is not None:
        message.update_time.CopyFrom(timestamp(settings.updated_at))
    return message


def contact_proto(contact: Contact) -> pb.Contact:
    return pb.Contact(account_id=contact.account_id, add_time=timestamp(contact.added_at))


def check_account_ids(
    check: Check, account_ids: Sequence[str], *, not_self: str | None = None
) -> None:
    """1 to 256 well-formed account ids (``not_self``: the caller's must not be among them)."""
    if not account_ids:
        check.fail("account_ids", f"required: 1 to {MAX_ACCOUNT_IDS} account ids")
        return
    if len(account_ids) > MAX_ACCOUNT_IDS:
        check.fail("account_ids", f"at most {MAX_ACCOUNT_IDS} account ids, got {len(account_ids)}")
        return
    for i, account_id in enumerate(account_ids):
        check.id(f"account_ids[{i}]", account_id)
        if not_self is not None and account_id == not_self:
            check.fail(f"account_ids[{i}]", "must not be the caller's own account")


def _visibility(check: Check, field: str, value: int) -> Visibility | None:
    """UNSPECIFIED keeps the current value (None); unknown numbers are errors."""
    if value == 0:
        return None
    if value not in VISIBILITIES:
        check.fail(field, f"unknown value {value}")
        return None
    return Visibility(value)


def _duration(seconds: float) -> Duration:
    result = Duration()
    result.FromMilliseconds(round(seconds * 1000))
    return result


class PresenceServicer(presence_pb2_grpc.PresenceServiceServicer):
    def __init__(
        self, presence: PresenceHandler, hub: Hub, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._presence = presence
        self._hub = hub
        self._clock = clock

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        rpc = request_context(context, clock=self._clock)
        ttl = await self._presence.heartbeat(
            account_id=rpc.account_id, device_id=rpc.device_id, now=rpc.now
        )
        return pb.HeartbeatResponse(ttl=_duration(ttl), interval=_duration(ttl / 3))

    async def GoOffline(self, request: pb.GoOfflineRequest, context: Any) -> pb.GoOfflineResponse:
        rpc = request_context(context, clock=self._clock)
        await self._presence.go_offline(
            account_id=rpc.account_id, device_id=rpc.device_id, now=rpc.now
        )
        return pb.GoOfflineResponse()

    async def GetPresence(
        self, request: pb.GetPresenceRequest, context: Any
    ) -> pb.GetPresenceResponse:
        check = Check()
        check_account_ids(check, request.account_ids)
        check.done()
        rpc = request_context(context, clock=self._clock)
        views = await self._presence.get_presence(
            viewer=rpc.account_id, account_ids=list(request.account_ids), now=self._clock()
        )
        return pb.GetPresenceResponse(presences=[presence_proto(v) for v in views])

    async def SubscribePresence(
        self, request: pb.SubscribePresenceRequest, context: Any
    ) -> AsyncIterator[pb.PresenceEvent]:
        check = Check()
        check_account_ids(check, request.account_ids)
        check.done()
        rpc = request_context(context, clock=self._clock)
        await self._presence.admit_subscription(viewer=rpc.account_id, now=rpc.now)
        session, snapshot = await self._hub.open(rpc.account_id, list(request.account_ids))
        async for batch in stream(self._hub, session, first=snapshot):
            yield pb.PresenceEvent(
                presences=[presence_proto(v) for v in batch.views], snapshot=batch.snapshot
            )

    async def GetPresenceSettings(
        self, request: pb.GetPresenceSettingsRequest, context: Any
    ) -> pb.PresenceSettings:
        rpc = request_context(context, clock=self._clock)
        settings = await self._presence.get_settings(account_id=rpc.account_id)
        return settings_proto(settings)

    async def UpdatePresenceSettings(
        self, request: pb.UpdatePresenceSettingsRequest, context: Any
    ) -> pb.PresenceSettings:
        check = Check()
        online = _visibility(check, "online", request.online)
        last_seen = _visibility(check, "last_seen", request.last_seen)
        check.done()
        rpc = request_context(context, clock=self._clock)
        settings = await self._presence.update_settings(
            account_id=rpc.account_id,
            online=online,
            last_seen=last_seen,
            invisible=request.invisible if request.HasField("invisible") else None,
            now=rpc.now,
        )
        return settings_proto(settings)

    async def AddContacts(
        self, request: pb.AddContactsRequest, context: Any
    ) -> pb.AddContactsResponse:
        rpc = request_context(context, clock=self._clock)
        check = Check()
        check_account_ids(check, request.account_ids, not_self=rpc.account_id)
        check.done()
        added = await self._presence.add_contacts(
            owner=rpc.account_id, account_ids=list(request.account_ids), now=rpc.now
        )
        return pb.AddContactsResponse(added_count=added)

    async def RemoveContacts(
        self, request: pb.RemoveContactsRequest, context: Any
    ) -> pb.RemoveContactsResponse:
        check = Check()
        check_account_ids(check, request.account_ids)
        check.done()
        rpc = request_context(context, clock=self._clock)
        removed = await self._presence.remove_contacts(
            owner=rpc.account_id, account_ids=list(request.account_ids)
        )
        return pb.RemoveContactsResponse(removed_count=removed)

    async def ListContacts(
        self, request: pb.ListContactsRequest, context: Any
    ) -> pb.ListContactsResponse:
        check = Check()
        limit = check.page_size(
            request.page_size, default=CONTACTS_PAGE_DEFAULT, maximum=CONTACTS_PAGE_MAX
        )
        check.done()
        rpc = request_context(context, clock=self._clock)
        owner = rpc.account_id
        scope = {"rpc": "ListContacts", "account": owner}
        after = None
        if request.page_token:
            position = decode_page_token(request.page_token, scope=scope)
            at, contact = position.get("t"), position.get("c")
            if not isinstance(at, int) or not isinstance(contact, str):
                check.fail("page_token", "not a page token from this API").done()
            else:
                after = (datetime.fromtimestamp(at / 1000, UTC), contact)
        contacts = await self._presence.list_contacts(owner=owner, after=after, limit=limit + 1)
        next_token = ""
        if len(contacts) > limit:
            contacts = contacts[:limit]
            last = contacts[-1]
            next_token = encode_page_token(
                {"t": _ms(last.added_at), "c": last.account_id}, scope=scope
            )
        return pb.ListContactsResponse(
            contacts=[contact_proto(c) for c in contacts], next_page_token=next_token
        )


def _ms(value: datetime) -> int:
    stamp = Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp.ToMilliseconds()
