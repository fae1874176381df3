"""The group scenario's record of arrivals: every measured message on every stream."""

from __future__ import annotations

from dataclasses import dataclass, field

from parley.message.v1 import messages_pb2 as mpb
from parley_dev.bench.population import BodyCodec

# The body header's phase byte of this scenario's messages.
PHASE_GROUP = 3


@dataclass
class FanoutRecorder:
    """Arrivals of the group's messages on every stream."""

    codec: BodyCodec
    # Serials of measured sends the server acknowledged.
    acked: set[int] = field(default_factory=set)
    latencies_ns: list[int] = field(default_factory=list)
    # Per measured serial: streams it reached, and its slowest arrival.
    reached: dict[int, int] = field(default_factory=dict)
    slowest_ns: dict[int, int] = field(default_factory=dict)
    duplicates: int = 0
    # Group message events on all streams (warm-up included), the ServerEvents
    # that carried them and the most one carried: the stream writes' batching.
    message_events: int = 0
    server_events: int = 0
    most_per_server_event: int = 0
    _seen: set[tuple[int, str]] = field(default_factory=set)
    _last_write: tuple[str, int] = ("", 0)
    _run: int = 0

    def on_message(self, stream_account: str, message: mpb.Message, arrived_ns: int) -> None:
        header = self.codec.decode(message.body)
        if header is None or header.phase != PHASE_GROUP:
            return
        self.message_events += 1
        # A stream stamps every event of one ServerEvent with the same arrival
        # time, and each stream is one account's: this pair is one stream write.
        write = (stream_account, arrived_ns)
        if write != self._last_write:
            self._last_write, self._run = write, 0
            self.server_events += 1
        self._run += 1
        self.most_per_server_event = max(self.most_per_server_event, self._run)
        if not header.measured:
            return
        key = (header.serial, stream_account)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        latency = arrived_ns - header.sent_ns
        self.latencies_ns.append(latency)
        self.reached[header.serial] = self.reached.get(header.serial, 0) + 1
        if latency > self.slowest_ns.get(header.serial, 0):
            self.slowest_ns[header.serial] = latency

    def missing(self, streams: int) -> int:
        """Deliveries of acknowledged measured sends that have not arrived yet."""
        return sum(streams - self.reached.get(serial, 0) for serial in self.acked)

    def complete_latencies_ns(self, streams: int) -> list[int]:
        """Per acknowledged message that reached every stream: its slowest arrival."""
        return [
            self.slowest_ns[serial]
            for serial in self.acked
            if self.reached.get(serial, 0) >= streams
        ]
