"""What the regions scenario watches: every measured message's send, ack and
arrival on each stream, and eu's replication gauges sampled over time."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from parley.message.v1 import messages_pb2 as mpb
from parley_dev.bench.population import BodyCodec

METRICS_TIMEOUT_SECONDS = 2.0
# The sampler stops by itself after this many samples (10 min at 0.1 s).
MAX_SAMPLES = 6000


@dataclass
class ArrivalBook:
    """Sends (client send time, ack time) and arrivals per (phase, serial, stream account)."""

    codec: BodyCodec
    # The accounts whose streams are timed, and the region each is connected to.
    receivers: dict[str, str] = field(default_factory=dict)
    sends: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    arrivals: dict[tuple[int, int, str], int] = field(default_factory=dict)
    duplicates: int = 0

    def acked(self, phase: int, serial: int, sent_ns: int, acked_ns: int) -> None:
        self.sends[(phase, serial)] = (sent_ns, acked_ns)

    def on_message(self, stream_account: str, message: mpb.Message, arrived_ns: int) -> None:
        header = self.codec.decode(message.body)
        if header is None or not header.measured or stream_account not in self.receivers:
            return
        key = (header.phase, header.serial, stream_account)
        if key in self.arrivals:
            self.duplicates += 1
            return
        self.arrivals[key] = arrived_ns

    def acked_serials(self, phase: int) -> list[int]:
        return sorted(serial for p, serial in self.sends if p == phase)

    def missing(self, phase: int, account: str) -> int:
        """Acknowledged measured sends of ``phase`` that never reached ``account``'s stream."""
        return sum(
            (phase, serial, account) not in self.arrivals for serial in self.acked_serials(phase)
        )

    def complete(self, phase: int, accounts: Iterable[str]) -> bool:
        return all(self.missing(phase, account) == 0 for account in accounts)

    def delivery_ns(self, phase: int, account: str, *, since_ack: bool = False) -> list[int]:
        """Per acknowledged send that arrived: arrival less the send call's start
        (or, ``since_ack``, less the moment the sender had the ack)."""
        out = []
        for serial in self.acked_serials(phase):
            arrived = self.arrivals.get((phase, serial, account))
            if arrived is None:
                continue
            sent_ns, acked_ns = self.sends[(phase, serial)]
            out.append(arrived - (acked_ns if since_ack else sent_ns))
        return out

    def ack_ns(self, phase: int) -> list[int]:
        return [acked - sent for (p, _), (sent, acked) in self.sends.items() if p == phase]


_SAMPLE = re.compile(
    r'^(parley_replication_lag_seconds|parley_replication_backlog)\{peer="([^"]*)"\} (\S+)$'
)


def parse_replication_gauges(text: str, peer: str) -> tuple[float | None, float | None]:
    """(lag seconds, backlog) for ``peer`` from a Prometheus text page; None where absent."""
    lag = backlog = None
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(2) != peer:
            continue
        if match.group(1) == "parley_replication_lag_seconds":
            lag = float(match.group(3))
        else:
            backlog = float(match.group(3))
    return lag, backlog


@dataclass
class GaugeSamples:
    lag_seconds: list[float] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)
    failures: int = 0


class MetricSampler:
    """Scrapes one svc_message's replication gauges for one peer, every interval,
    in a background task, until stopped (or MAX_SAMPLES)."""

    def __init__(self, url: str, *, peer: str) -> None:
        self._url = url
        self._peer = peer
        self._task: asyncio.Task[None] | None = None
        self.samples = GaugeSamples()

    def start(self, interval_s: float) -> None:
        self._task = asyncio.create_task(self._run(interval_s))

    async def _run(self, interval_s: float) -> None:
        for _ in range(MAX_SAMPLES):
            began = time.monotonic()
            try:
                text = await asyncio.to_thread(self._fetch)
            except OSError:
                self.samples.failures += 1
            else:
                lag, backlog = parse_replication_gauges(text, self._peer)
                if lag is not None:
                    self.samples.lag_seconds.append(lag)
                if backlog is not None:
                    self.samples.backlog.append(backlog)
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - began)))

    def _fetch(self) -> str:
        with urllib.request.urlopen(self._url, timeout=METRICS_TIMEOUT_SECONDS) as response:  # noqa: S310
            text: str = response.read().decode()
            return text

    async def stop(self) -> GaugeSamples:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.samples


# The channel a replica region's svc_message announces what replication wrote
# on (svc_message/storage/doorbell.py REPLICATED_CHANNEL): "c:<conversation>".
REPLICATED_CHANNEL = "parley:replicated"
PUBSUB_POLL_SECONDS = 0.5
REDIS_TIMEOUT_SECONDS = 5.0
# At most this many announcements are kept (far more than a run makes).
MAX_WAKES = 200_000


class ReplicatedWakes:
    """When the replica region announced each conversation's replicated writes
    (the moment its streams are woken to read their log again), as heard by
    a subscriber of the region's Redis."""

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        # conversation id -> perf_counter_ns of each announcement, ascending.
        self.heard: dict[str, list[int]] = {}
        self._count = 0

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(REPLICATED_CHANNEL)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while self._count < MAX_WAKES:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=PUBSUB_POLL_SECONDS
            )
            if message is None or message["type"] != "message":
                continue
            heard = time.perf_counter_ns()
            kind, _, conversation_id = bytes(message["data"]).decode().partition(":")
            if kind == "c":
                self.heard.setdefault(conversation_id, []).append(heard)
                self._count += 1

    def last_before(self, conversation_id: str, t_ns: int) -> int | None:
        """The latest announcement of the conversation at or before ``t_ns``."""
        times = self.heard.get(conversation_id, [])
        index = bisect.bisect_right(times, t_ns)
        return times[index - 1] if index else None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()


def wake_split(
    book: ArrivalBook,
    last_before: Callable[[str, int], int | None],
    *,
    phase: int,
    conversation_id: str,
    account: str,
) -> tuple[list[int], list[int]]:
    """Per message of ``phase`` that reached ``account``'s stream at the replica:
    (send -> the replica's last announcement of the conversation before that
    arrival, that announcement -> the arrival). The announcement that woke
    the stream is taken to be the latest one before it read the message."""
    to_wake: list[int] = []
    wake_to_stream: list[int] = []
    for serial in book.acked_serials(phase):
        arrived = book.arrivals.get((phase, serial, account))
        if arrived is None:
            continue
        woke = last_before(conversation_id, arrived)
        sent_ns, _ = book.sends[(phase, serial)]
        if woke is None or woke < sent_ns:
            continue
        to_wake.append(woke - sent_ns)
        wake_to_stream.append(arrived - woke)
    return to_wake, wake_to_stream


_APPLY = re.compile(
    r'^parley_rpc_duration_seconds_(count|sum)\{[^}]*method="[^"]*Apply"[^}]*\} (\S+)$'
)
_SENT = re.compile(r"^parley_replication_sent_changes_total\{([^}]*)\} (\S+)$")


@dataclass(frozen=True)
class ReplicationTotals:
    """Counters at one moment: Apply calls the replica handled and their
    seconds (its RPC histogram), changes the owner's replicator had sent."""

    apply_calls: float
    apply_seconds: float
    changes_sent: float


def parse_replication_totals(replica_page: str, owner_page: str, peer: str) -> ReplicationTotals:
    calls = seconds = sent = 0.0
    for line in replica_page.splitlines():
        match = _APPLY.match(line)
        if match is not None:
            if match.group(1) == "count":
                calls += float(match.group(2))
            else:
                seconds += float(match.group(2))
    for line in owner_page.splitlines():
        match = _SENT.match(line)
        if match is not None and f'peer="{peer}"' in match.group(1):
            sent += float(match.group(2))
    return ReplicationTotals(calls, seconds, sent)


class ReplicationCounters:
    """Reads the totals from the replica's and the owner's svc_message metrics."""

    def __init__(self, replica_url: str, owner_url: str, *, peer: str) -> None:
        self._urls = (replica_url, owner_url)
        self._peer = peer

    async def read(self) -> ReplicationTotals | None:
        try:
            replica, owner = await asyncio.gather(
                *(asyncio.to_thread(_fetch, url) for url in self._urls)
            )
        except OSError:
            return None
        return parse_replication_totals(replica, owner, self._peer)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_SECONDS) as response:  # noqa: S310
        text: str = response.read().decode()
        return text


def replication_between(
    before: ReplicationTotals | None, after: ReplicationTotals | None
) -> dict[str, float | None]:
    """What replication did between two readings: Apply calls, their mean
    handling time at the replica, changes sent and changes per Apply."""
    if before is None or after is None:
        return {"apply_calls": None, "apply_mean_ms": None, "changes_sent": None}
    calls = after.apply_calls - before.apply_calls
    changes = after.changes_sent - before.changes_sent
    return {
        "apply_calls": calls,
        "apply_mean_ms": round((after.apply_seconds - before.apply_seconds) * 1000 / calls, 2)
        if calls
        else None,
        "changes_sent": changes,
        "changes_per_apply": round(changes / calls, 2) if calls else None,
    }
