"""Which region's svc_media serves a media request (docs/design/regions.md,
"Residency").

An object lives in the store of the region that took its upload: the
uploader's home region, since CreateUpload names no conversation. Media and
upload ids carry that region's number, so any region sends a request to the
one holding what it names: CreateUpload and GetQuota go to the caller's home
region, GetUpload, CompleteUpload and AbortUpload to the upload id's region,
GetDownload, RestoreMedia and GetRestore to the media id's region. A request
forwarded once is never forwarded again (hop limit 1); a region that did not
answer is refused locally for ``down_seconds`` (UNAVAILABLE,
REGION_UNAVAILABLE), and nothing is ever served from another region's store.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from parley_core.regions import RegionBreaker, RegionMap, forwarded_twice, region_unavailable
from svc_media.model import is_media_id, region_number_of_media
from svc_media.ports import RegionLink, RegionUnreachable

DOWN_SECONDS = 2.0
FORWARD_TIMEOUT_SECONDS = 10.0


class MediaRegionRouter:
    def __init__(
        self,
        regions: Callable[[], RegionMap],
        link: RegionLink,
        *,
        forward_timeout_seconds: float = FORWARD_TIMEOUT_SECONDS,
        down_seconds: float = DOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._regions = regions
        self._link = link
        self._forward_timeout = forward_timeout_seconds
        self._breaker = RegionBreaker(down_seconds=down_seconds, clock=clock)
        self.forwarded: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    @property
    def self_region(self) -> str:
        return self._regions().self_region

    def region_number(self) -> int | None:
        """The number ids minted here carry; None without regions."""
        return self._regions().self_number

    def holder_of_media(self, media_id: str) -> str:
        """The region whose store holds the object ``media_id`` names. A bare
        id is the legacy region's; a number no region has is handled here,
        where it is simply not found."""
        regions = self._regions()
        if regions.self_number is None or not is_media_id(media_id):
            return regions.self_region
        number = region_number_of_media(media_id)
        if number is None:
            return regions.legacy_region
        return regions.names_by_number.get(number, regions.self_region)

    def holder_of_upload(self, upload_id: str) -> str:
        return self._regions().region_or_self(upload_id)

    def home_of(self, account_id: str) -> str:
        return self._regions().region_or_self(account_id)

    def is_local(self, region: str) -> bool:
        return region == self._regions().self_region

    async def forward(
        self,
        region: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str | None,
        timeout: float | None,
        forwarded: bool,
    ) -> bytes:
        """The holder region's answer; its refusals are raised as they came.
        ``bearer_token`` None: an internal call, with the service credential."""
        if forwarded:
            raise forwarded_twice("this media", region)
        if self._breaker.is_down(region):
            self.refused[region] = self.refused.get(region, 0) + 1
            raise region_unavailable(region, "it did not answer a moment ago")
        call_timeout = (
            self._forward_timeout if timeout is None else min(self._forward_timeout, timeout)
        )
        try:
            answer = await self._link.forward(
                region, method, request, bearer_token=bearer_token, timeout=max(0.01, call_timeout)
            )
        except RegionUnreachable:
            self._breaker.failed(region)
            self.refused[region] = self.refused.get(region, 0) + 1
            raise region_unavailable(region, "the forward did not reach it") from None
        self._breaker.answered(region)
        self.forwarded[region] = self.forwarded.get(region, 0) + 1
        return answer
