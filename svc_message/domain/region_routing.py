"""Which region handles a conversation's writes, and the fast refusal while
it cannot be reached (docs/design/regions.md, parts 2 and 8).

The owner region of a conversation is the region its id names. Creations go
to the region that will own the conversation: a group's or channel's
creator's home region; for a direct conversation, the home region of the
lesser of the two account ids, so that both sides' creations meet in one
region without coordination. A region that failed to answer is refused
locally for ``down_seconds`` (UNAVAILABLE, REGION_UNAVAILABLE) instead of
making every request wait for a timeout; no other region ever takes its
conversations over.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from parley_core.regions import (
    RegionBreaker,
    RegionMap,
    forwarded_twice,
    region_unavailable,
)
from svc_message.model.ownership import OwnerUnreachable
from svc_message.ports import RegionLink

DOWN_SECONDS = 2.0


class RegionRouter:
    def __init__(
        self,
        regions: Callable[[], RegionMap],
        link: RegionLink,
        *,
        forward_timeout_seconds: float,
        down_seconds: float = DOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._regions = regions
        self._link = link
        self._forward_timeout = forward_timeout_seconds
        self._breaker = RegionBreaker(down_seconds=down_seconds, clock=clock)
        self.forwarded: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    def _region(self, tagged_id: str) -> str:
        return self._regions().region_or_self(tagged_id)

    def owner_of(self, conversation_id: str) -> str:
        return self._region(conversation_id)

    def creator_home(self, account_id: str) -> str:
        return self._region(account_id)

    def direct_owner(self, account_id: str, peer_account_id: str) -> str:
        return self._region(min(account_id, peer_account_id))

    def is_local(self, region: str) -> bool:
        return region == self._regions().self_region

    async def forward(
        self,
        region: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str,
        timeout: float | None,
        forwarded: bool,
    ) -> bytes:
        """The owner region's answer; its refusals come back as OwnerRefused."""
        if forwarded:
            raise forwarded_twice("this conversation", region)
        if self._breaker.is_down(region):
            self.refused[region] = self.refused.get(region, 0) + 1
            raise region_unavailable(region, "it did not answer a moment ago")
        call_timeout = (
            self._forward_timeout if timeout is None else min(self._forward_timeout, timeout)
        )
        try:
            answer = await self._link.forward_to_region(
                region, method, request, bearer_token=bearer_token, timeout=max(0.01, call_timeout)
            )
        except OwnerUnreachable:
            self._breaker.failed(region)
            self.refused[region] = self.refused.get(region, 0) + 1
            raise region_unavailable(region, "the forward did not reach it") from None
        self._breaker.answered(region)
        self.forwarded[region] = self.forwarded.get(region, 0) + 1
        return answer
