"""The targets each scenario is judged by, in one place: pure functions of a
report's figures (and its parameters) to PASS / MISS verdicts.

A target names the figure or ratio it judges exactly as the JSON report keys
it (``ratios`` included), so ``--compare`` can line targets up with figures.
Adding a scenario (media, search) is one function here and one entry in
``SCENARIO_TARGETS``. Limits that hold only under the conditions the project
states them for (a 1,024-member group, 16 readers) still get a verdict on a
smaller run, with a caveat saying how the run differed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Comparison = Literal[">=", "<="]
Verdict = Literal["PASS", "MISS", "N/A"]
Figures = Mapping[str, Any]
TargetsOf = Callable[[Figures, Figures], list["Target"]]

# messaging: judged against the thin durable service measured in the same run,
# so a slower or busier machine moves both sides.
SEND_FRACTION_OF_THIN_DURABLE = 0.7
SEND_ACK_P99_TIMES_THIN_DURABLE = 2.0
DELIVER_P99_MAX_MS = 50.0
FETCH_P50_MAX_MS = 5.0
FETCH_P99_MAX_MS = 20.0
FETCH_READERS = 16
# group
GROUP_DELIVER_P99_MAX_MS = 100.0
GROUP_MEMBERS = 1024
GROUP_RATE = 5.0
# presence: what bench/results/README.md reports of a full run, as limits: a
# heartbeat is one Redis script call; heartbeats/s held 0.45 of bare unary
# calls from the same callers; a change reached every allowed subscriber
# within ~65 ms at p99 (online, and offline through the sweeper).
HEARTBEAT_FRACTION_OF_UNARY = 0.4
REDIS_SCRIPTS_PER_HEARTBEAT_MAX = 1.05
PRESENCE_CHANGE_P99_MAX_MS = 100.0

# media: svc_media's transfers against bare presigned requests to the same
# store in the same run (issue 16): the service may cost a fifth of the bytes' rate.
MEDIA_FRACTION_OF_BARE = 0.8
MEDIA_SIZES = (1 << 20, 16 << 20)

# history: the design's tier table (a page of 50: hot p99 < 10 ms, cold
# p99 < 500 ms) and issue 17's archiver rate against a bare pyarrow write of
# the same rows to the same store in the same run.
HISTORY_HOT_P99_MAX_MS = 10.0
HISTORY_COLD_P99_MAX_MS = 500.0
ARCHIVER_FRACTION_OF_BARE = 0.5
# search (issue 18): server queries over 1M postings of one conversation,
# client-side queries over 100k messages in the SDK's index.
SEARCH_QUERY_P99_MAX_MS = 50.0
SEARCH_POSTINGS = 1_000_000
LOCAL_QUERY_P99_MAX_MS = 20.0
LOCAL_MESSAGES = 100_000

# regions (issue 20): cross-region send -> delivery p99 within the injected
# RTT plus 100 ms, beside a bare gRPC ping through the same proxy.
REGIONS_DELIVER_P99_OVER_RTT_MS = 100.0
REGIONS_RTT_MS = 80.0

SEND_RATIO = "send_rps / thin_durable_rps"
ARCHIVER_RATIO = "archiver_messages_per_s / bare_pyarrow_messages_per_s"
SEND_P99_RATIO = "send_ack_p99_ms / thin_durable_p99_ms"
HEARTBEAT_RATIO = "presence_heartbeats_per_s / baseline_unary_rps"
SEARCH_P99_RATIO = "search_query_p99_ms / bare_read_p99_ms"


def judge(value: float | None, comparison: Comparison, limit: float | None) -> Verdict:
    """PASS when ``value comparison limit`` holds, MISS when not, N/A when either is unknown."""
    if value is None or limit is None:
        return "N/A"
    met = value >= limit if comparison == ">=" else value <= limit
    return "PASS" if met else "MISS"


@dataclass(frozen=True, slots=True)
class Target:
    """One stated target and this run's value for it."""

    name: str
    value: float | None
    comparison: Comparison
    limit: float
    unit: str
    # How the project states it, when the name alone does not say.
    note: str = ""
    # How this run's conditions differ from the target's ("" when they match).
    caveat: str = ""

    @property
    def verdict(self) -> Verdict:
        return judge(self.value, self.comparison, self.limit)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 3),
            "limit": self.limit,
            "comparison": self.comparison,
            "unit": self.unit,
            "verdict": self.verdict,
            "note": self.note,
            "caveat": self.caveat,
        }


def _figure(figures: Figures, name: str) -> float | None:
    """A top-level figure or a ratio of the report, by its JSON name."""
    value = figures.get(name)
    if value is None:
        value = (figures.get("ratios") or {}).get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _differs(parameters: Figures, **expected: Any) -> str:
    """``key=value`` for each parameter of the run unlike the target's conditions."""
    return ", ".join(
        f"{key}={parameters[key]!r} (target: {want!r})"
        for key, want in expected.items()
        if key in parameters and parameters[key] != want
    )


def messaging_targets(figures: Figures, parameters: Figures) -> list[Target]:
    readers = _differs(parameters, readers=FETCH_READERS)
    return [
        Target(
            SEND_RATIO,
            _figure(figures, SEND_RATIO),
            ">=",
            SEND_FRACTION_OF_THIN_DURABLE,
            "x",
            note="durable sends/s against the thin durable service, same load",
        ),
        Target(
            SEND_P99_RATIO,
            _figure(figures, SEND_P99_RATIO),
            "<=",
            SEND_ACK_P99_TIMES_THIN_DURABLE,
            "x",
            note="send ack p99 against the thin durable service's p99",
        ),
        Target(
            "deliver_p99_ms",
            _figure(figures, "deliver_p99_ms"),
            "<=",
            DELIVER_P99_MAX_MS,
            "ms",
            note="at half the max send rate",
            caveat=_differs(parameters, deliver_rate_override=None),
        ),
        Target(
            "fetch_recent_p50_ms",
            _figure(figures, "fetch_recent_p50_ms"),
            "<=",
            FETCH_P50_MAX_MS,
            "ms",
            note=f"{FETCH_READERS} readers",
            caveat=readers,
        ),
        Target(
            "fetch_recent_p99_ms",
            _figure(figures, "fetch_recent_p99_ms"),
            "<=",
            FETCH_P99_MAX_MS,
            "ms",
            note=f"{FETCH_READERS} readers",
            caveat=readers,
        ),
    ]


def group_targets(figures: Figures, parameters: Figures) -> list[Target]:
    return [
        Target(
            "group_deliver_p99_ms",
            _figure(figures, "group_deliver_p99_ms"),
            "<=",
            GROUP_DELIVER_P99_MAX_MS,
            "ms",
            note=(
                f"send to delivery on every stream of a {GROUP_MEMBERS}-member group, "
                f"{GROUP_RATE:g} messages/s, streams ack"
            ),
            caveat=_differs(
                parameters,
                group_members=GROUP_MEMBERS,
                streams=GROUP_MEMBERS,
                send_rate=GROUP_RATE,
                streams_ack=True,
            ),
        )
    ]


def presence_targets(figures: Figures, parameters: Figures) -> list[Target]:
    return [
        Target(
            HEARTBEAT_RATIO,
            _figure(figures, HEARTBEAT_RATIO),
            ">=",
            HEARTBEAT_FRACTION_OF_UNARY,
            "x",
            note="heartbeats/s against bare gRPC unary calls from the same callers",
        ),
        Target(
            "presence_redis_scripts_per_heartbeat",
            _figure(figures, "presence_redis_scripts_per_heartbeat"),
            "<=",
            REDIS_SCRIPTS_PER_HEARTBEAT_MAX,
            "calls",
            note="one Redis round trip per heartbeat, whoever watches the user",
        ),
        *(
            Target(
                f"presence_{kind}_change_p99_ms",
                _figure(figures, f"presence_{kind}_change_p99_ms"),
                "<=",
                PRESENCE_CHANGE_P99_MAX_MS,
                "ms",
                note=f"{kind} change to every allowed subscriber",
            )
            for kind in ("online", "offline")
        ),
    ]


def _size_label(size: int) -> str:
    return f"{size >> 20}mib" if size % (1 << 20) == 0 else f"{size}b"


def media_targets(figures: Figures, parameters: Figures) -> list[Target]:
    sizes = [int(s) for s in parameters.get("sizes_bytes") or MEDIA_SIZES]
    caveat = _differs(
        {"sizes": [_size_label(s) for s in sizes]},
        sizes=[_size_label(s) for s in MEDIA_SIZES],
    )
    targets: list[Target] = []
    for size in sizes:
        label = _size_label(size)
        for name, what in (
            (f"media_upload_{label}_mb_per_s / bare_put_{label}_mb_per_s", "upload+complete"),
            (f"media_download_{label}_mb_per_s / bare_get_{label}_mb_per_s", "download"),
        ):
            targets.append(
                Target(
                    name,
                    _figure(figures, name),
                    ">=",
                    MEDIA_FRACTION_OF_BARE,
                    "x",
                    note=f"{what} MB/s of {label} files against bare presigned requests, "
                    "same store, sizes and concurrency",
                    caveat=caveat,
                )
            )
    return targets


def history_targets(figures: Figures, parameters: Figures) -> list[Target]:
    readers = parameters.get("readers")
    targets = [
        Target(
            f"history_{tier}_{direction}_p99_ms",
            _figure(figures, f"history_{tier}_{direction}_p99_ms"),
            "<=",
            limit,
            "ms",
            note=f"a page of 50 from the {tier} tier, {direction}, through ListMessages, "
            f"{readers} readers",
        )
        for tier, limit in (("hot", HISTORY_HOT_P99_MAX_MS), ("cold", HISTORY_COLD_P99_MAX_MS))
        for direction in ("backward", "forward")
    ]
    targets.append(
        Target(
            ARCHIVER_RATIO,
            _figure(figures, ARCHIVER_RATIO),
            ">=",
            ARCHIVER_FRACTION_OF_BARE,
            "x",
            note="one archiver pass (write, read back, manifest, delete) against a bare pyarrow "
            "write of the same rows to the same store",
        )
    )
    return targets


def search_targets(figures: Figures, parameters: Figures) -> list[Target]:
    return [
        Target(
            "search_query_p99_ms",
            _figure(figures, "search_query_p99_ms"),
            "<=",
            SEARCH_QUERY_P99_MAX_MS,
            "ms",
            note=f"Search through svc_search, {SEARCH_POSTINGS:,} postings in the conversation "
            "(the bare indexed read of the same postings is in the same run)",
            caveat=_differs(parameters, postings=SEARCH_POSTINGS),
        ),
        Target(
            "local_query_p99_ms",
            _figure(figures, "local_query_p99_ms"),
            "<=",
            LOCAL_QUERY_P99_MAX_MS,
            "ms",
            note=f"the SDK's on-device FTS5 index, {LOCAL_MESSAGES:,} messages",
            caveat=_differs(parameters, local_messages=LOCAL_MESSAGES),
        ),
    ]


def regions_targets(figures: Figures, parameters: Figures) -> list[Target]:
    rtt = float(parameters.get("rtt_ms", REGIONS_RTT_MS))
    caveat = _differs(parameters, rtt_ms=REGIONS_RTT_MS)
    return [
        Target(
            "regions_forward_deliver_p99_ms",
            _figure(figures, "regions_forward_deliver_p99_ms"),
            "<=",
            rtt + REGIONS_DELIVER_P99_OVER_RTT_MS,
            "ms",
            note=f"RTT + {REGIONS_DELIVER_P99_OVER_RTT_MS:g} ms: a send at us to an eu-owned "
            "group (forwarded) until its delivery to a device at eu",
            caveat=caveat,
        ),
        Target(
            "regions_replicated_deliver_p99_ms",
            _figure(figures, "regions_replicated_deliver_p99_ms"),
            "<=",
            rtt + REGIONS_DELIVER_P99_OVER_RTT_MS,
            "ms",
            note=f"RTT + {REGIONS_DELIVER_P99_OVER_RTT_MS:g} ms: the same send until its delivery "
            "to a device at us (forwarded us->eu, then replicated eu->us: one RTT of crossings)",
            caveat=caveat,
        ),
    ]


SCENARIO_TARGETS: dict[str, TargetsOf] = {
    "messaging": messaging_targets,
    "group": group_targets,
    "presence": presence_targets,
    "media": media_targets,
    "history": history_targets,
    "search": search_targets,
    "regions": regions_targets,
}


def evaluate(scenario: str, figures: Figures, parameters: Figures) -> list[dict[str, Any]]:
    """The ``targets`` list of a scenario's JSON report."""
    return [t.as_dict() for t in SCENARIO_TARGETS[scenario](figures, parameters)]


def render_targets(targets: list[Mapping[str, Any]]) -> list[str]:
    """The table's ``targets:`` section, one line per target with its verdict."""
    lines = ["targets:"]
    for t in targets:
        value = "-" if t["value"] is None else f"{t['value']:,.3g}"
        if t["value"] is not None and abs(t["value"]) >= 100:
            value = f"{t['value']:,.0f}"
        line = (
            f"  {t['verdict']:4}  {t['name']} {t['comparison']} {t['limit']:g} {t['unit']}"
            f"  (measured {value} {t['unit']})"
        )
        if t.get("note"):
            line += f"; {t['note']}"
        lines.append(line)
        if t.get("caveat"):
            lines.append(f"        ! this run differs: {t['caveat']}")
    return lines
