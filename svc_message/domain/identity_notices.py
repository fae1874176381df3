"""Identity-change system messages: when a device publishes a new identity
key (a re-install), everyone who talks with its account must learn of it,
since messages from that device no longer come from the key they trusted.

svc_keys records each change in an outbox (``identity_changes``); a worker
in every svc_message process claims changes one at a time, under a lease,
and writes a system message IDENTITY_CHANGED into every direct and group
conversation the account is a member of then (channels are broadcasts: a
subscriber has no session with the poster's devices). The messages are
ordinary feed entries, so live streams, replay and history carry them.

Like the other system messages, each is sent in the name of its actor (the
account, from the device whose key changed), and is idempotent by
(conversation, sender, request id): the request id follows from the change
id, so a worker that dies midway, or that outlives its lease while another
one redoes the change, still leaves exactly one message per conversation.
The change is deleted only once every conversation has its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from parley_core.ids import new_id
from svc_message.domain.sending import Draft, SendPipeline
from svc_message.model import (
    DIRECT,
    GROUP,
    SYSTEM,
    Change,
    ChangeKind,
    Conversation,
    Message,
    SystemAction,
    SystemEvent,
)
from svc_message.ports import IdentityChangeOutbox, IdentityChangeRecord
from svc_message.storage.conversations import ConversationStore

log = structlog.get_logger(__name__)

# Conversations written per round: their system messages share group commits.
PAGE_SIZE = 100
NOTIFIED_TYPES = (DIRECT, GROUP)
# Clients' request ids are UUIDs, so none can take one of these.
REQUEST_PREFIX = "identity-changed:"


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def request_id_for(change_id: str) -> str:
    return REQUEST_PREFIX + change_id


def identity_changed(conversation: Conversation, change: IdentityChangeRecord) -> Change:
    """The system message of one change in one conversation, before the
    pipeline gives it its place (version, seq, id, time)."""
    request_id = request_id_for(change.change_id)
    placeholder = _at(0)
    return Change(
        kind=ChangeKind.SYSTEM,
        conversation_id=conversation.conversation_id,
        version=0,
        change_id="",
        account_id=change.account_id,
        created_at=placeholder,
        request_id=request_id,
        message=Message(
            message_id="",
            conversation_id=conversation.conversation_id,
            seq=0,
            sender_account_id=change.account_id,
            sender_device_id=change.device_id,
            type=SYSTEM,
            body=b"",
            reply_to_message_id="",
            created_at=placeholder,
            request_id=request_id,
            system=SystemEvent(
                SystemAction.IDENTITY_CHANGED, change.account_id, device_id=change.device_id
            ),
        ),
    )


class IdentityNotifier:
    def __init__(
        self,
        outbox: IdentityChangeOutbox,
        conversations: ConversationStore,
        pipeline: SendPipeline,
        *,
        poll_seconds: float,
        lease_seconds: float,
        clock: Callable[[], float],
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._outbox = outbox
        self._conversations = conversations
        self._pipeline = pipeline
        self._poll = poll_seconds
        self._lease = timedelta(seconds=lease_seconds)
        self._clock = clock
        self._page = page_size
        self._worker_id = new_id()
        # Changes finished and system messages written (or found written) by
        # this process.
        self.changes_done = 0
        self.messages_written = 0
        self.failures = 0

    async def run(self) -> None:
        """Work the outbox until cancelled; poll while it is empty."""
        while True:
            try:
                busy = await self.run_once(now=self._clock())
            except Exception as exc:
                # The change keeps its lease; it is redone once that runs out.
                log.warning("identity_change_failed", error=str(exc))
                self.failures += 1
                busy = False
            if not busy:
                await asyncio.sleep(self._poll)

    async def run_once(self, *, now: float) -> bool:
        """Claim one change and write its system messages; False when there
        was nothing to claim."""
        change = await self._outbox.claim(
            worker_id=self._worker_id, now=_at(now), lease=self._lease
        )
        if change is None:
            return False
        written = await self.announce(change)
        await self._outbox.done(change.change_id)
        self.changes_done += 1
        log.info(
            "identity_change_announced",
            account=change.account_id,
            device=change.device_id,
            conversations=written,
        )
        return True

    async def announce(self, change: IdentityChangeRecord) -> int:
        """Write the change's system message into each of the account's
        direct and group conversations; how many there were."""
        after = ""
        count = 0
        while True:
            page = await self._conversations.member_conversations(
                change.account_id, types=NOTIFIED_TYPES, after=after, limit=self._page
            )
            if not page:
                return count
            results = await asyncio.gather(
                *(
                    self._pipeline.submit(
                        Draft(conversation=c, template=identity_changed(c, change))
                    )
                    for c in page
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            count += len(page)
            self.messages_written += len(page)
            if len(page) < self._page:
                return count
            after = page[-1].conversation_id
