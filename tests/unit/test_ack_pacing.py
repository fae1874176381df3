"""AckBatcher paces its periodic database writes and writes at once at shutdown."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from svc_message.domain.acks import AckBatcher
from svc_message.model.broadcast import Broadcast


class RecordingStore:
    def __init__(self) -> None:
        self.writes: list[tuple[float, int]] = []

    async def raise_device_cursors(self, raises: Iterable[tuple[str, str, int]]) -> None:
        self.writes.append((time.monotonic(), len(list(raises))))


class NoPublisher:
    async def publish(self, deliveries: Sequence[Broadcast]) -> None:
        return None


def batcher(store: RecordingStore, *, chunk: int, write_rate: float) -> AckBatcher:
    return AckBatcher(
        store,  # type: ignore[arg-type]
        NoPublisher(),
        codec=None,  # type: ignore[arg-type]  # never used: nothing is published here
        flush_seconds=1.0,
        cursor_flush_seconds=1.0,
        clock=time.time,
        chunk=chunk,
        write_rate=write_rate,
    )


def ack_devices(acks: AckBatcher, count: int) -> None:
    for i in range(count):
        acks.ack(
            account_id=f"a{i}",
            device_id=f"d{i}",
            conversation_id="c",
            position=i + 1,
            delivered=0,
        )


async def test_a_periodic_flush_spreads_its_chunks_at_the_write_rate() -> None:
    store = RecordingStore()
    acks = batcher(store, chunk=10, write_rate=200.0)  # 0.05 s between chunks
    ack_devices(acks, 35)
    await acks.flush_cursors()
    assert [n for _, n in store.writes] == [10, 10, 10, 5]
    gaps = [b - a for (a, _), (b, _) in zip(store.writes, store.writes[1:], strict=False)]
    assert min(gaps) >= 0.045


async def test_the_shutdown_flush_writes_everything_at_once() -> None:
    store = RecordingStore()
    acks = batcher(store, chunk=10, write_rate=1.0)  # 10 s between chunks if paced
    ack_devices(acks, 35)
    started = time.monotonic()
    await acks.flush()
    assert [n for _, n in store.writes] == [10, 10, 10, 5]
    assert time.monotonic() - started < 1.0
