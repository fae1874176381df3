"""svc_message's abuse limits (the shared limiter), with one exception: a
retry of a feed change that is already in the feed is answered, not refused.

Clients retry with the same request id (AIP-155) after a lost answer; the
pipeline answers such a retry with what the first attempt stored. Refusing
it because the first attempt spent the last token would tell the client its
acknowledged message failed. So a refused change looks up its request id
(an indexed read, on refusals only) and passes when it finds it; a retry
that still has tokens spends one, like any request.
"""

from __future__ import annotations

from parley_core.limits import Limiter, LimitName, Take
from svc_message.model import CHANNEL, GROUP
from svc_message.storage.messages import MessageStore


def send_takes(
    *, account_id: str, device_id: str, conversation_id: str, conversation_type: int
) -> tuple[Take, ...]:
    """What a SendMessage spends: the device's and the account's tokens (one
    tag, one script call) and, in a group or channel, the conversation's."""
    takes: tuple[Take, ...] = (
        Take(LimitName.SEND_PER_DEVICE, account_id, key=device_id),
        Take(LimitName.SEND_PER_ACCOUNT, account_id),
    )
    if conversation_type in (GROUP, CHANNEL):
        takes += (Take(LimitName.SEND_PER_CONVERSATION, conversation_id),)
    return takes


class FeedLimits:
    def __init__(self, limiter: Limiter, messages: MessageStore) -> None:
        self._limiter = limiter
        self._messages = messages

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    async def per_account(self, limit: LimitName, account_id: str, *, now: float) -> None:
        """For requests that are not feed changes (no replay to recognise)."""
        await self._limiter.take(Take(limit, account_id), now=now)

    async def change(
        self,
        *takes: Take,
        conversation_id: str,
        account_id: str,
        request_id: str,
        now: float,
    ) -> None:
        """Takes for a feed change, unless it is a retry of one already in the feed."""
        refusal = await self._limiter.check(*takes, now=now)
        if refusal is None:
            return
        if request_id and (
            await self._messages.by_request(conversation_id, account_id, request_id) is not None
        ):
            return
        raise self._limiter.refuse(refusal)

    async def account_change(
        self, limit: LimitName, conversation_id: str, account_id: str, request_id: str, now: float
    ) -> None:
        """A feed change limited per account (edits, deletes, reactions, membership)."""
        await self.change(
            Take(limit, account_id),
            conversation_id=conversation_id,
            account_id=account_id,
            request_id=request_id,
            now=now,
        )
