"""The 0/1 reachability gauges and the sampled backlog counts."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from parley_core.sampling import SampledCount
from parley_core.storage.probes import BackendMetrics, BackendProbe


class Admin:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    async def command(self, name: str) -> dict[str, Any]:
        assert name == "ping"
        if self.behaviour == "hang":
            await asyncio.sleep(60)
        if self.behaviour == "fail":
            raise ConnectionError("no route")
        return {"ok": 1}


class Mongo:
    def __init__(self, behaviour: str) -> None:
        self.admin = Admin(behaviour)


class Redis:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    async def ping(self) -> bool:
        if self.behaviour == "hang":
            await asyncio.sleep(60)
        if self.behaviour == "fail":
            raise OSError("connection refused")
        return True


def gauges(probe: BackendProbe) -> str:
    registry = CollectorRegistry()
    registry.register(BackendMetrics(probe, service="message"))
    return generate_latest(registry).decode()


async def probe_with(mongo: str, redis: str) -> BackendProbe:
    probe = BackendProbe(Mongo(mongo), Redis(redis), timeout_seconds=0.05)  # type: ignore[arg-type]
    await probe.check()
    return probe


async def test_up_when_both_answer() -> None:
    text = gauges(await probe_with("ok", "ok"))
    assert 'parley_mongo_up{service="message"} 1.0' in text
    assert 'parley_redis_up{service="message"} 1.0' in text


async def test_down_when_a_ping_fails_or_hangs() -> None:
    text = gauges(await probe_with("hang", "fail"))
    assert 'parley_mongo_up{service="message"} 0.0' in text
    assert 'parley_redis_up{service="message"} 0.0' in text
    text = gauges(await probe_with("fail", "hang"))
    assert 'parley_mongo_up{service="message"} 0.0' in text
    assert 'parley_redis_up{service="message"} 0.0' in text


async def test_a_sampled_count_keeps_its_last_value_when_a_read_fails() -> None:
    answers: list[int | Exception] = [3, RuntimeError("database down"), 5]

    async def read() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    count = SampledCount("backlog", read)
    assert count.value is None
    await count.sample()
    assert count.value == 3
    await count.sample()
    assert count.value == 3
    await count.sample()
    assert count.value == 5
