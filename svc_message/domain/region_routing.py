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

from parley_core.regions import RegionForwards, RegionMap
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
        self._forwards = RegionForwards(
            forward_timeout_seconds=forward_timeout_seconds, down_seconds=down_seconds, clock=clock
        )
        # Per peer region, for the metrics.
        self.forwarded = self._forwards.forwarded
        self.refused = self._forwards.refused

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
        return await self._forwards.forward(
            region,
            lambda deadline: self._link.forward_to_region(
                region, method, request, bearer_token=bearer_token, timeout=deadline
            ),
            what="this conversation",
            timeout=timeout,
            forwarded=forwarded,
            unreachable=OwnerUnreachable,
        )
