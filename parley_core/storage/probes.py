"""Whether this process can reach MongoDB and Redis right now, for /metrics.

A ping of each every few seconds, with a short deadline; the collector
exports the last answers as 0/1 gauges (``parley_mongo_up``,
``parley_redis_up``), which the chart's alerts watch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from parley_core.storage.mongo import MongoClient
from parley_core.storage.redis import Redis

PROBE_INTERVAL_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 2.0


class BackendProbe:
    def __init__(
        self,
        mongo: MongoClient,
        redis: Redis,
        *,
        interval_seconds: float = PROBE_INTERVAL_SECONDS,
        timeout_seconds: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self._mongo = mongo
        self._redis = redis
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        # The runtime pinged MongoDB before building this; Redis is checked at once.
        self.mongo_up = True
        self.redis_up = False

    async def _answers(self, check: Awaitable[object]) -> bool:
        try:
            await asyncio.wait_for(check, self._timeout)
        except Exception:
            return False
        return True

    async def check(self) -> None:
        self.mongo_up, self.redis_up = await asyncio.gather(
            self._answers(self._mongo.admin.command("ping")),
            self._answers(self._redis.ping()),
        )

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval)


class BackendMetrics(Collector):
    def __init__(self, probe: BackendProbe, *, service: str) -> None:
        self._probe = probe
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        mongo = GaugeMetricFamily(
            "parley_mongo_up",
            "1 when this process's last MongoDB ping (every 5 s) was answered.",
            labels=["service"],
        )
        mongo.add_metric([self._service], 1 if self._probe.mongo_up else 0)
        yield mongo
        redis = GaugeMetricFamily(
            "parley_redis_up",
            "1 when this process's last Redis PING (every 5 s) was answered.",
            labels=["service"],
        )
        redis.add_metric([self._service], 1 if self._probe.redis_up else 0)
        yield redis
