"""Gauges read from the database every few seconds (a count query), for
backlogs that live in a collection rather than in the process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

SAMPLE_SECONDS = 5.0


class SampledCount:
    """The latest answer of ``read``; None until the first one arrives."""

    def __init__(
        self,
        name: str,
        read: Callable[[], Awaitable[int]],
        *,
        interval_seconds: float = SAMPLE_SECONDS,
    ) -> None:
        self.name = name
        self._read = read
        self._interval = interval_seconds
        self.value: int | None = None

    async def sample(self) -> None:
        try:
            self.value = await self._read()
        except Exception as exc:
            # The last value stays: a gauge that vanishes looks like an empty backlog.
            log.warning("count_sample_failed", name=self.name, error=str(exc))

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self._interval)
