"""One rate limiter for every service: token buckets in Redis, taken by one
script call per hash tag, with in-process buckets when Redis does not answer.

Public names: ``Limiter``, ``Take``, ``Refusal``, ``LimitName``, ``Rate``,
``rates_from_settings``; the Redis store is ``parley_core.storage.ratelimit``
and a composition root gets a ready limiter from ``Runtime.limiter``.
"""

from __future__ import annotations

from parley_core.limits.buckets import (
    Bucket,
    BucketStore,
    InProcessBuckets,
    LocalBuckets,
    Rate,
    Shortfall,
)
from parley_core.limits.limiter import LIMIT_METADATA, Limiter, Refusal, Take
from parley_core.limits.names import LimitName
from parley_core.limits.settings import rates_from_settings

__all__ = [
    "LIMIT_METADATA",
    "Bucket",
    "BucketStore",
    "InProcessBuckets",
    "LimitName",
    "Limiter",
    "LocalBuckets",
    "Rate",
    "Refusal",
    "Shortfall",
    "Take",
    "rates_from_settings",
]
