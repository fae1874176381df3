"""svc_keys across regions: an account's devices, tokens, keys, prekeys and
sender-key envelopes live in its home region (docs/design/regions.md), so
calls about another region's accounts (and a device's own calls made in
another region) are forwarded there, as the caller, once."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from parley_core.regions import RegionMap, forwarded_twice
from svc_keys.domain.regions import home_of
from svc_keys.ports import RegionPeers


class KeyRegionRouter:
    def __init__(self, regions: Callable[[], RegionMap], peers: RegionPeers | None) -> None:
        self._regions = regions
        self._peers = peers

    def remote_home(self, account_id: str) -> str | None:
        """The account's home region when it is not this one."""
        regions = self._regions()
        if regions.self_number is None or self._peers is None:
            return None
        home = home_of(regions, account_id)
        return None if home in ("", regions.self_region) else home

    def by_home(self, account_ids: Iterable[str]) -> dict[str | None, list[str]]:
        """Account ids grouped by remote home region; None: this region."""
        groups: dict[str | None, list[str]] = {}
        for account_id in account_ids:
            groups.setdefault(self.remote_home(account_id), []).append(account_id)
        return groups

    async def forward(
        self,
        region: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str | None,
        forwarded: bool,
    ) -> bytes:
        """``method``: the full path, ``/package.Service/Method``."""
        if forwarded or self._peers is None:
            raise forwarded_twice("that account", region)
        return await self._peers.forward_call(region, method, request, bearer_token=bearer_token)
