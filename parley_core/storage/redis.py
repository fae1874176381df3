"""Redis connections. Redis is a doorbell and a cache, never the only copy of data."""

from __future__ import annotations

import redis.asyncio as aioredis

from parley_core.config import RedisSettings

Redis = aioredis.Redis


def connect(settings: RedisSettings) -> Redis:
    return aioredis.Redis.from_url(
        settings.url,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.socket_timeout_seconds,
        health_check_interval=10,
        retry_on_timeout=False,
    )
