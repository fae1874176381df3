"""What the regions scenario watches: every measured message's send, ack and
arrival on each stream, and eu's replication gauges sampled over time."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

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
