"""What one ``parley bench`` run is asked to do: the scenario and every knob,
from the command line (parley_dev.bench.args) to the scenarios."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from parley_dev.bench.phases import FETCH_PAGE
from parley_dev.bench.population import wire_sizes

EventLoop = Literal["uvloop", "asyncio"]
Scenario = Literal["messaging", "group", "presence", "media", "history", "search", "regions"]


@dataclass(frozen=True)
class BenchConfig:
    start: bool
    keys_target: str
    message_targets: tuple[str, ...]
    message_instances: int
    data_dir: Path
    loop: EventLoop
    quick: bool
    concurrency: int
    pairs: int
    readers: int
    fetch_conversations: int
    body_bytes: int
    warmup_s: float
    duration_s: float
    deliver_rate: float | None
    json_path: Path | None
    profile: bool
    keep: bool = False
    pids: Mapping[str, int] = field(default_factory=dict)
    scenario: Scenario = "messaging"
    # Where each run is appended (None: nowhere).
    history_path: Path | None = None
    # The group scenario (parley_dev.bench.group).
    group_members: int = 1024
    group_streams: int = 1024
    group_messages: int = 200
    group_rate: float = 4.0
    group_channels: int = 4
    group_ack: bool = True
    # The presence scenario (parley_dev.bench.presence).
    presence_target: str = "127.0.0.1:7103"
    presence_users: int = 5000
    presence_subscribers: int = 1000
    presence_allowed_fraction: float = 0.5
    presence_toggles: int = 50
    presence_channels: int = 4
    # The media scenario (parley_dev.bench.media).
    media_target: str = "127.0.0.1:7104"
    media_sizes: tuple[int, ...] = (1 << 20, 16 << 20)
    media_concurrency: int = 4
    # Turns each phase's window is cut into, bare and svc_media alternating.
    media_rounds: int = 3
    # The history scenario (parley_dev.bench.history_tiers): conversations,
    # messages in each, readers per read phase, the dataset's seed.
    history_conversations: int = 16
    history_messages: int = 1500
    history_readers: int = 4
    history_seed: int = 17
    # The search scenario (parley_dev.bench.search).
    search_target: str = "127.0.0.1:7105"
    # Postings loaded for the searched conversation, and how many of its
    # messages are indexed through IndexMessage (the rest in bulk).
    search_postings: int = 1_000_000
    search_indexed_by_rpc: int = 2000
    search_callers: int = 4
    search_rounds: int = 3
    # Messages in the SDK's on-device index for the client-side figures.
    search_local_messages: int = 100_000
    # The regions scenario (parley_dev.bench.regions): the RTT injected between
    # eu and us, pings per path, measured messages per case and their rate,
    # then the sustained load (groups, sends/s, seconds).
    regions_rtt_ms: float = 80.0
    regions_pings: int = 200
    regions_messages: int = 200
    regions_rate: float = 10.0
    regions_load_groups: int = 16
    regions_load_rate: float = 50.0
    regions_load_seconds: float = 20.0

    def parameters(self) -> dict[str, Any]:
        send_bytes, event_bytes = wire_sizes(self.body_bytes)
        return {
            "quick": self.quick,
            "loop": self.loop,
            "started_stack": self.start,
            "message_instances": self.message_instances
            if self.start
            else len(self.message_targets),
            "concurrency": self.concurrency,
            "baseline_unary_callers": self.concurrency,
            "thin_durable_callers": self.concurrency,
            "pairs": self.pairs,
            "users": 2 * self.pairs,
            "streams": 2 * self.pairs,
            "baseline_push_streams": 2 * self.pairs,
            "readers": self.readers,
            "fetch_conversations": self.fetch_conversations,
            "fetch_page_size": FETCH_PAGE,
            "body_bytes": self.body_bytes,
            "baseline_unary_payload_bytes": send_bytes,
            "thin_durable_payload_bytes": send_bytes,
            "baseline_push_payload_bytes": event_bytes,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "deliver_rate_override": self.deliver_rate,
            "deliver_max_in_flight": self.max_in_flight,
            "deliver_arrivals": "evenly spaced",
            "channels_per_target": 1,
            "profile": self.profile,
        }

    @property
    def max_in_flight(self) -> int:
        return 4 * self.concurrency
