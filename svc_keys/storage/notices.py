"""Live key notices on the accounts' doorbell channels (``parley:u:<account>``).

Each notice is an encoded ``parley.message.v1.Event`` carrying a KeyNotice,
the form svc_message's delivery streams forward as is. Publishing is best
effort: when Redis does not take it, the caller's request still succeeds, and
what the notice said is either stored (the low-water record, read at the next
stream start) or found by the device itself (ClaimSenderKeys).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from parley.message.v1 import messages_pb2
from parley_core.storage.key_notices import account_channel, publish_to_account
from parley_core.storage.redis import REDIS_ERRORS, Redis

log = structlog.get_logger(__name__)

KeyNotice = messages_pb2.KeyNotice


def pre_keys_low_event(*, device_id: str, count: int) -> bytes:
    notice = KeyNotice(kind=KeyNotice.KIND_PRE_KEYS_LOW, pre_key_count=count, device_id=device_id)
    return messages_pb2.Event(key_notice=notice).SerializeToString()


def sender_keys_waiting_event(*, conversation_id: str, device_id: str) -> bytes:
    notice = KeyNotice(
        kind=KeyNotice.KIND_SENDER_KEYS_WAITING,
        conversation_id=conversation_id,
        device_id=device_id,
    )
    return messages_pb2.Event(key_notice=notice).SerializeToString()


class KeyNoticePublisher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def pre_keys_low(self, *, account_id: str, device_id: str, count: int) -> bool:
        return await publish_to_account(
            self._redis, account_id, pre_keys_low_event(device_id=device_id, count=count)
        )

    async def sender_keys_waiting(
        self, *, conversation_id: str, recipients: Sequence[tuple[str, str]]
    ) -> bool:
        """One notice per (account, device) recipient, in one round trip."""
        if not recipients:
            return True
        try:
            await self._redis.publish_many(
                (
                    account_channel(account_id),
                    sender_keys_waiting_event(conversation_id=conversation_id, device_id=device_id),
                )
                for account_id, device_id in recipients
            )
        except REDIS_ERRORS as exc:
            log.info("sender_keys_notice_not_published", error=repr(exc))
            return False
        return True
