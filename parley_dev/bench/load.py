"""Load drivers: closed loop (back-to-back callers) and open loop (a fixed offered rate).

Every phase has a warm-up, then a measurement window. Only calls that complete
inside the window count, for throughput and latency alike, so the ramp-up and
the tail of calls still in flight at the end are both left out. Every loop is
bounded: by the window's end in time, and by the per-call deadline that callers
give their RPCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from parley_dev.bench.stats import LatencySummary, per_second, summarize_ns

NS = 1_000_000_000
# Every RPC of the bench carries this deadline, so no call can outlive a phase by much.
CALL_TIMEOUT_SECONDS = 10.0
# A failing call (server down, bad credentials) would otherwise spin a caller hot.
ERROR_PAUSE_SECONDS = 0.01
# Extra time a phase waits for calls still in flight at its end.
DRAIN_MARGIN_SECONDS = CALL_TIMEOUT_SECONDS + 2.0

Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Window:
    """The measured part of a phase, on the time.perf_counter_ns clock."""

    start_ns: int
    end_ns: int

    @classmethod
    def after(cls, warmup_s: float, duration_s: float) -> Window:
        start = time.perf_counter_ns() + int(warmup_s * NS)
        return cls(start, start + int(duration_s * NS))

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / NS

    def contains(self, t_ns: int) -> bool:
        return self.start_ns <= t_ns <= self.end_ns


async def sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.perf_counter_ns()) / NS
    if delay > 0:
        await asyncio.sleep(delay)


async def watch_window(window: Window, on_start: Sequence[Hook], on_end: Sequence[Hook]) -> None:
    """Run the hooks at the window's edges (CPU snapshots, counters, the profiler)."""
    await sleep_until(window.start_ns)
    for hook in on_start:
        await hook()
    await sleep_until(window.end_ns)
    for hook in on_end:
        await hook()


def error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__


@dataclass
class LoadResult:
    """What one phase measured: completions and latencies inside its window."""

    window_s: float
    completed: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return per_second(self.completed, self.window_s)

    @property
    def latency(self) -> LatencySummary:
        return summarize_ns(self.latencies_ns)


async def closed_loop(
    workers: int,
    call: Callable[[int], Awaitable[None]],
    *,
    window: Window,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
) -> LoadResult:
    """``workers`` callers, each awaiting ``call(worker)`` back-to-back until the window ends."""
    result = LoadResult(window.seconds)

    async def worker(index: int) -> None:
        while time.perf_counter_ns() < window.end_ns:
            began = time.perf_counter_ns()
            try:
                await call(index)
            except Exception as exc:
                if window.contains(time.perf_counter_ns()):
                    result.errors[error_name(exc)] += 1
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            done = time.perf_counter_ns()
            if window.contains(done):
                result.completed += 1
                result.latencies_ns.append(done - began)

    async with asyncio.timeout(window.end_ns / NS - time.perf_counter() + DRAIN_MARGIN_SECONDS):
        await asyncio.gather(
            watch_window(window, on_start, on_end), *(worker(i) for i in range(workers))
        )
    return result


@dataclass
class OpenLoopResult(LoadResult):
    """An open-loop phase: what was offered, and how late the scheduler fired."""

    offered_rps: float = 0.0
    scheduled: int = 0
    # Sends not made because max_in_flight were already outstanding: the system
    # (or this client) could not keep up with the offered rate.
    shed: int = 0
    lag_ns: list[int] = field(default_factory=list)

    @property
    def lag(self) -> LatencySummary:
        return summarize_ns(self.lag_ns)


async def open_loop(
    rate: float,
    call: Callable[[int, bool], Awaitable[None]],
    *,
    window: Window,
    warmup_start_ns: int,
    max_in_flight: int,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
) -> OpenLoopResult:
    """Start ``call(serial, measured)`` at ``rate`` per second, evenly spaced, whatever the replies.

    Sends are due at fixed instants from ``warmup_start_ns``; a scheduler that
    wakes late fires every overdue send at once instead of skipping them, so the
    offered rate holds. ``measured`` tells the call whether it was due inside
    the window.
    """
    if rate <= 0:
        raise ValueError("the offered rate must be positive")
    result = OpenLoopResult(window.seconds, offered_rps=rate)
    interval_ns = NS / rate
    in_flight: set[asyncio.Task[None]] = set()

    async def timed(serial: int, measured: bool) -> None:
        began = time.perf_counter_ns()
        try:
            await call(serial, measured)
        except Exception as exc:
            if measured:
                result.errors[error_name(exc)] += 1
            return
        done = time.perf_counter_ns()
        if measured:
            result.completed += 1
            result.latencies_ns.append(done - began)

    async def schedule() -> None:
        serial = 0
        while True:
            due = warmup_start_ns + int(serial * interval_ns)
            if due >= window.end_ns:
                return
            now = time.perf_counter_ns()
            if due > now:
                await asyncio.sleep((due - now) / NS)
                continue
            measured = window.contains(due)
            if measured:
                result.scheduled += 1
                result.lag_ns.append(now - due)
            if len(in_flight) >= max_in_flight:
                result.shed += measured
            else:
                task = asyncio.create_task(timed(serial, measured))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            serial += 1

    try:
        async with asyncio.timeout(window.end_ns / NS - time.perf_counter() + DRAIN_MARGIN_SECONDS):
            await asyncio.gather(watch_window(window, on_start, on_end), schedule())
            if in_flight:
                await asyncio.wait(set(in_flight))
    finally:
        for task in in_flight:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*in_flight, return_exceptions=True)
    return result
