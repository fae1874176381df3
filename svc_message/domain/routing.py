"""Where a feed change of a conversation is sequenced: here, or at its owner.

A request for a conversation this process does not own is forwarded to the
owner over gRPC, with the caller's own token, and the owner's answer (or
error, status and details intact) is relayed. While no process can be
reached as the owner (it died and its leases have not expired yet, or it is
handing shards over), the request waits up to ``wait_seconds`` for a new
owner, then answers UNAVAILABLE, which clients retry with the same
request_id: never ABORTED, and never a change applied twice, since every
routed request is idempotent by its request_id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from parley_core.errors import Unavailable
from svc_message.domain.ownership import ShardOwnership
from svc_message.model.ownership import OwnerUnreachable
from svc_message.ports import OwnerLink

# Between two looks for an owner while there is none to reach.
RETRY_PAUSE_SECONDS = 0.05


def no_owner() -> Unavailable:
    return Unavailable(
        "this conversation is moving to another server; retry with the same request_id",
        retry_after_seconds=0.5,
    )


class OwnerRouter:
    def __init__(
        self,
        ownership: ShardOwnership,
        link: OwnerLink,
        *,
        wait_seconds: float,
        forward_timeout_seconds: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._ownership = ownership
        self._link = link
        self._wait = wait_seconds
        self._forward_timeout = forward_timeout_seconds
        self._clock = clock
        self._sleep = sleep
        self.forwarded = 0
        self.unowned = 0

    def is_local(self, conversation_id: str) -> bool:
        return self._ownership.owns(self._ownership.shard_of(conversation_id))

    async def forward(
        self,
        conversation_id: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str,
        timeout: float | None,
    ) -> bytes | None:
        """The owner's answer, or None when this process is (now) the owner
        and handles the request itself."""
        shard = self._ownership.shard_of(conversation_id)
        started = self._clock()
        budget = self._wait if timeout is None else min(self._wait, timeout)
        pause = RETRY_PAUSE_SECONDS
        while True:
            if self._ownership.owns(shard):
                return None
            address = self._ownership.owner_address(shard)
            if address is not None:
                call_timeout = self._forward_timeout
                if timeout is not None:
                    call_timeout = min(call_timeout, timeout - (self._clock() - started))
                try:
                    answer = await self._link.forward(
                        address,
                        method,
                        request,
                        bearer_token=bearer_token,
                        timeout=max(0.01, call_timeout),
                    )
                except OwnerUnreachable:
                    pass
                else:
                    self.forwarded += 1
                    return answer
            self._ownership.nudge()
            if self._clock() - started + pause > budget:
                self.unowned += 1
                raise no_owner()
            await self._sleep(pause)
            pause = min(pause * 2, 0.5)
