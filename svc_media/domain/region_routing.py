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

from parley_core.regions import RegionForwards, RegionMap
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
        self._forwards = RegionForwards(
            forward_timeout_seconds=forward_timeout_seconds, down_seconds=down_seconds, clock=clock
        )
        # Per peer region, for the metrics.
        self.forwarded = self._forwards.forwarded
        self.refused = self._forwards.refused

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
        return await self._forwards.forward(
            region,
            lambda deadline: self._link.forward(
                region, method, request, bearer_token=bearer_token, timeout=deadline
            ),
            what="this media",
            timeout=timeout,
            forwarded=forwarded,
            unreachable=RegionUnreachable,
        )
