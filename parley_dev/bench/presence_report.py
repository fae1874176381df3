"""The presence scenario's report: Redis command accounting, one JSON-ready
object, and the table rendered from it.

Redis work is counted with ``INFO commandstats``, whose ``calls`` include the
commands a Lua script runs (``redis.call`` inside EVALSHA): a heartbeat made
of one script that runs five commands shows as 1 ``evalsha`` plus those five.
So two figures: script calls (one network round trip each) and all commands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from parley_dev.bench.load import LoadResult
from parley_dev.bench.report import _num, _phase, _round, _rows
from parley_dev.bench.stats import ratio, summarize_ns
from parley_dev.bench.targets import evaluate, render_targets

SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
# The bench's own INFO calls are not the service's work.
OWN_COMMANDS = frozenset({"info"})
# A per-unit figure within this of its expected value counts as equal: the
# background subtraction leaves a few stray commands of the sweeper.
COUNT_TOLERANCE = 0.05
# How the publish counts name the watched user's presence channel.
WATCHED_CHANNEL = "watched user's channel"
PRESENCE_HEADLINE_KEYS = (
    "presence_heartbeats_per_s",
    "presence_heartbeat_p50_ms",
    "presence_heartbeat_p99_ms",
    "baseline_unary_rps",
    "baseline_unary_p50_ms",
    "presence_redis_scripts_per_heartbeat",
    "presence_redis_commands_per_heartbeat",
    "presence_online_change_p50_ms",
    "presence_online_change_p99_ms",
    "presence_offline_change_p50_ms",
    "presence_offline_change_p99_ms",
    "presence_change_deliveries",
    "presence_hidden_deliveries",
    "presence_publishes_per_change",
    "presence_events_per_change",
)
PRESENCE_PHASE_ORDER = ("baseline_unary", "setup", "heartbeat", "fanout")
ChangeKind = Literal["online", "offline"]
# Counts per unit keep three decimals: 1.002 script calls per heartbeat is news.
_FINE = ("_per_heartbeat", "_per_change")


def command_calls(info: Mapping[str, Any]) -> dict[str, int]:
    """``{command: calls}`` from redis-py's parsed ``INFO commandstats``."""
    calls: dict[str, int] = {}
    for key, stats in info.items():
        if key.startswith("cmdstat_") and isinstance(stats, Mapping) and "calls" in stats:
            calls[key.removeprefix("cmdstat_")] = int(stats["calls"])
    return calls


def calls_between(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Calls per command between two ``command_calls`` snapshots, the bench's own left out."""
    return {
        name: count - before.get(name, 0)
        for name, count in sorted(after.items())
        if name not in OWN_COMMANDS and count > before.get(name, 0)
    }


@dataclass(frozen=True)
class RedisCost:
    """Redis commands run while ``units`` operations (heartbeats, changes) were
    made over ``seconds``, less the background (the sweeper, other services)
    counted over an idle stretch right after."""

    units: int
    seconds: float
    calls: dict[str, int]
    background_per_s: dict[str, float] = field(default_factory=dict)

    def per_unit(self) -> dict[str, float]:
        if self.units <= 0:
            return {}
        names = sorted(self.calls.keys() | self.background_per_s.keys())
        result = {}
        for name in names:
            net = self.calls.get(name, 0) - self.background_per_s.get(name, 0.0) * self.seconds
            result[name] = max(0.0, net) / self.units
        return {name: round(value, 3) for name, value in result.items() if value >= 0.0005}

    @property
    def scripts_per_unit(self) -> float | None:
        if self.units <= 0:
            return None
        return round(sum(v for k, v in self.per_unit().items() if k in SCRIPT_COMMANDS), 3)

    @property
    def commands_per_unit(self) -> float | None:
        if self.units <= 0:
            return None
        return round(sum(self.per_unit().values()), 3)

    def command(self, name: str) -> float | None:
        return None if self.units <= 0 else self.per_unit().get(name, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "seconds": round(self.seconds, 3),
            "calls": self.calls,
            "background_per_s": {k: round(v, 2) for k, v in self.background_per_s.items()},
            "per_unit": self.per_unit(),
            "scripts_per_unit": self.scripts_per_unit,
            "commands_per_unit": self.commands_per_unit,
        }


@dataclass(frozen=True)
class ChangeTiming:
    """One presence change of the watched user, as the allowed subscribers saw it."""

    kind: ChangeKind
    # The Heartbeat or GoOffline call's own latency.
    call_ns: int
    # Call start to arrival, one per allowed subscriber reached.
    arrivals_ns: list[int]
    missing: int


@dataclass
class PresenceMeasurements:
    baseline_unary: LoadResult
    heartbeat: LoadResult
    # None: the stack's Redis is not known.
    heartbeat_cost: RedisCost | None
    # Renewals of the watched user while every subscriber watches it.
    renewal_cost: RedisCost | None
    renewal_events: int
    # Published on the watched user's channel during those renewals.
    renewal_publishes: int | None
    # Published during the measured changes, by kind of channel (channel_kinds).
    change_publishes: dict[str, int] | None
    change_cost: RedisCost | None
    changes: list[ChangeTiming]
    allowed: int
    hidden: int
    # Presences of the watched user that reached hidden subscribers after their snapshot.
    hidden_deliveries: int
    # Non-snapshot PresenceEvents at all subscribers during the measured changes.
    change_events: int
    duplicates: int
    unexpected: int
    # "allowed" / "hidden" -> availability name -> subscribers, from the first snapshot.
    snapshots: dict[str, dict[str, int]]
    # svc_presence's MongoDB documents written, by "collection/op" (None: not known).
    heartbeat_db_documents: dict[str, int] | None
    fanout_db_documents: dict[str, int] | None
    cpu_seconds: dict[str, dict[str, float | None]]
    stream_errors: list[str] = field(default_factory=list)
    aborted: str | None = None


def _cpu_us_per(
    cpu: Mapping[str, Mapping[str, float | None]], phase: str, process: str, units: int
) -> float | None:
    seconds = cpu.get(phase, {}).get(process)
    if seconds is None or units <= 0:
        return None
    return seconds * 1e6 / units


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _changes(m: PresenceMeasurements, kind: ChangeKind) -> dict[str, Any]:
    picked = [c for c in m.changes if c.kind == kind]
    every = summarize_ns([ns for c in picked for ns in c.arrivals_ns])
    last = summarize_ns([max(c.arrivals_ns) for c in picked if c.arrivals_ns and not c.missing])
    return {
        "changes": len(picked),
        "deliveries": every.count,
        "missing": sum(c.missing for c in picked),
        "call_latency": summarize_ns([c.call_ns for c in picked]).as_dict(),
        "delivery_latency": every.as_dict(),
        "last_subscriber_latency": last.as_dict(),
    }


def _checks(m: PresenceMeasurements, publishes: float | None, events: float | None) -> list[Any]:
    def near(value: float | None, expected: float) -> bool | None:
        return None if value is None else abs(value - expected) <= COUNT_TOLERANCE

    hidden_snapshot = m.snapshots.get("hidden", {})
    renewal_same: bool | None = None
    if m.renewal_cost is not None and m.heartbeat_cost is not None:
        watched, anyone = m.renewal_cost.commands_per_unit, m.heartbeat_cost.commands_per_unit
        if watched is not None and anyone is not None:
            renewal_same = (
                watched <= anyone + COUNT_TOLERANCE
                and m.renewal_publishes == 0
                and m.renewal_events == 0
            )
    measured = bool(m.changes)
    checks = [
        (
            "every change reached every allowed subscriber",
            (sum(c.missing for c in m.changes) == 0) if measured else None,
        ),
        ("no change reached a hidden subscriber", m.hidden_deliveries == 0),
        (
            "hidden subscribers' snapshot says AVAILABILITY_UNSPECIFIED",
            set(hidden_snapshot) <= {"AVAILABILITY_UNSPECIFIED"} if m.hidden else None,
        ),
        ("one Redis PUBLISH per change", near(publishes, 1.0)),
        ("gRPC events per change = allowed subscribers", near(events, float(m.allowed))),
        ("no duplicate or unexpected presence events", m.duplicates == 0 and m.unexpected == 0),
        (
            "renewing a watched user costs no more Redis work than anyone's heartbeat "
            "and notifies no one",
            renewal_same,
        ),
    ]
    return [
        {"name": name, "verdict": {True: "PASS", False: "FAIL", None: "N/A"}[passed]}
        for name, passed in checks
    ]


def build_presence_report(
    m: PresenceMeasurements, *, machine: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    heartbeat, unary = m.heartbeat.latency, m.baseline_unary.latency
    hb_cost, change_cost = m.heartbeat_cost, m.change_cost
    online, offline = _changes(m, "online"), _changes(m, "offline")
    measured_changes = len(m.changes)
    publishes = None
    if m.change_publishes is not None and measured_changes:
        publishes = m.change_publishes.get(WATCHED_CHANNEL, 0) / measured_changes
    events = m.change_events / measured_changes if measured_changes else None
    deliveries = online["deliveries"] + offline["deliveries"]
    figures: dict[str, float | None] = {
        "presence_heartbeats_per_s": m.heartbeat.rate or None,
        "presence_heartbeat_p50_ms": heartbeat.p50_ms,
        "presence_heartbeat_p99_ms": heartbeat.p99_ms,
        "baseline_unary_rps": m.baseline_unary.rate or None,
        "baseline_unary_p50_ms": unary.p50_ms,
        "baseline_unary_p99_ms": unary.p99_ms,
        "presence_redis_scripts_per_heartbeat": hb_cost.scripts_per_unit if hb_cost else None,
        "presence_redis_commands_per_heartbeat": hb_cost.commands_per_unit if hb_cost else None,
        "presence_svc_cpu_us_per_heartbeat": _cpu_us_per(
            m.cpu_seconds, "heartbeat", "svc_presence", m.heartbeat.completed
        ),
        "presence_redis_cpu_us_per_heartbeat": _cpu_us_per(
            m.cpu_seconds, "heartbeat", "redis", m.heartbeat.completed
        ),
        "presence_online_change_p50_ms": online["delivery_latency"]["p50_ms"],
        "presence_online_change_p99_ms": online["delivery_latency"]["p99_ms"],
        "presence_online_change_last_p50_ms": online["last_subscriber_latency"]["p50_ms"],
        "presence_online_change_last_p99_ms": online["last_subscriber_latency"]["p99_ms"],
        "presence_offline_change_p50_ms": offline["delivery_latency"]["p50_ms"],
        "presence_offline_change_p99_ms": offline["delivery_latency"]["p99_ms"],
        "presence_offline_change_last_p50_ms": offline["last_subscriber_latency"]["p50_ms"],
        "presence_offline_change_last_p99_ms": offline["last_subscriber_latency"]["p99_ms"],
        "presence_change_deliveries": deliveries if measured_changes else None,
        "presence_hidden_deliveries": m.hidden_deliveries,
        "presence_publishes_per_change": publishes,
        "presence_redis_commands_per_change": change_cost.commands_per_unit
        if change_cost
        else None,
        "presence_events_per_change": events,
        "presence_svc_cpu_ms_per_change": _ms(
            _cpu_us_per(m.cpu_seconds, "fanout", "svc_presence", measured_changes)
        ),
    }
    ratios = {
        "presence_heartbeats_per_s / baseline_unary_rps": ratio(
            m.heartbeat.rate, m.baseline_unary.rate
        ),
        "presence_heartbeat_p50_ms / baseline_unary_p50_ms": ratio(heartbeat.p50_ms, unary.p50_ms),
    }
    checks = _checks(m, publishes, events)
    failed = [c["name"] for c in checks if c["verdict"] == "FAIL"]
    warnings = _warnings(m)
    unmeasured = [k for k in PRESENCE_HEADLINE_KEYS if figures[k] is None]
    if unmeasured:
        warnings.insert(0, f"not measured: {', '.join(unmeasured)}")
    return {
        "scenario": "presence",
        **{k: _round(v, 3 if k.endswith(_FINE) else 2) for k, v in figures.items()},
        "ratios": {k: _round(v, 3) for k, v in ratios.items()},
        "targets": evaluate("presence", {**figures, "ratios": ratios}, parameters),
        "checks": checks,
        "failed_checks": failed,
        "phases": {
            "baseline_unary": _phase(m.baseline_unary),
            "heartbeat": {
                **_phase(m.heartbeat),
                "redis_cost": hb_cost.as_dict() if hb_cost else None,
                "db_documents_written": m.heartbeat_db_documents,
            },
            "fanout": {
                "allowed_subscribers": m.allowed,
                "hidden_subscribers": m.hidden,
                "measured_changes": measured_changes,
                "online": online,
                "offline": offline,
                "change_events": m.change_events,
                "hidden_deliveries": m.hidden_deliveries,
                "duplicates": m.duplicates,
                "unexpected": m.unexpected,
                "snapshots": m.snapshots,
                "redis_cost": change_cost.as_dict() if change_cost else None,
                "published_by_channel": m.change_publishes,
                "watched_renewal": {
                    "redis_cost": m.renewal_cost.as_dict() if m.renewal_cost else None,
                    "events": m.renewal_events,
                    "publishes": m.renewal_publishes,
                },
                "db_documents_written": m.fanout_db_documents,
                "aborted": m.aborted,
            },
        },
        "cpu_seconds": m.cpu_seconds,
        "machine": dict(machine),
        "parameters": dict(parameters),
        "stream_errors": m.stream_errors,
        "warnings": warnings,
        "complete": not unmeasured,
    }


def _warnings(m: PresenceMeasurements) -> list[str]:
    notes: list[str] = []
    for name, result in (("baseline_unary", m.baseline_unary), ("heartbeat", m.heartbeat)):
        if result.errors:
            notes.append(f"{name}: errors {dict(result.errors)}")
    if m.aborted:
        notes.append(f"fanout: stopped early: {m.aborted}")
    missing = sum(c.missing for c in m.changes)
    if missing:
        notes.append(f"fanout: {missing} deliveries to allowed subscribers never arrived")
    if m.hidden_deliveries:
        notes.append(
            f"fanout: {m.hidden_deliveries} presences reached subscribers they are hidden from"
        )
    if m.duplicates or m.unexpected:
        notes.append(f"fanout: {m.duplicates} duplicate and {m.unexpected} unexpected presences")
    if m.heartbeat_cost is None:
        notes.append("the stack's Redis is not known (--start, or --data-dir of `parley up`)")
    if m.stream_errors:
        notes.append(f"{len(m.stream_errors)} subscriptions ended early: {m.stream_errors[:3]}")
    return notes


def _cost_text(cost: Mapping[str, Any] | None, top: int = 4) -> str:
    if not cost:
        return ""
    ranked = sorted(cost["per_unit"].items(), key=lambda item: -item[1])[:top]
    return ", ".join(f"{name} {count:g}" for name, count in ranked)


def _others(published: Mapping[str, int] | None) -> str:
    if published is None:
        return "-"
    others = [f"{name} {count}" for name, count in published.items() if name != WATCHED_CHANNEL]
    return ", ".join(others) or "none"


def _pair(r: Mapping[str, Any], a: str, b: str) -> str:
    return f"{_num(r[a])} / {_num(r[b])}"


def _change_rows(r: Mapping[str, Any], kind: str) -> list[tuple[str, str, str, str]]:
    key = f"presence_{kind}_change"
    return [
        (
            f"{kind} change to each subscriber p50 / p99 ms",
            _pair(r, f"{key}_p50_ms", f"{key}_p99_ms"),
            "",
            "",
        ),
        (
            f"{kind} change to the last subscriber p50 / p99 ms",
            _pair(r, f"{key}_last_p50_ms", f"{key}_last_p99_ms"),
            "",
            "",
        ),
    ]


def render_presence(report: Mapping[str, Any]) -> str:
    r, params, machine = report, report["parameters"], report["machine"]
    heartbeat, fanout = r["phases"]["heartbeat"], r["phases"]["fanout"]
    renewal = fanout["watched_renewal"]
    lines = [
        f"parley bench --scenario presence: {machine['cores']} cores, Python "
        f"{machine['python']}, grpcio {machine['grpcio']}, loop {params['loop']}, "
        f"{'quick' if params['quick'] else 'full'} run, load average at start "
        f"{machine['loadavg_at_start'][0]}",
        f"  heartbeats: {params['heartbeat_users']:,} online users, {params['concurrency']} "
        f"closed-loop callers over {params['channels']} channels, {params['duration_s']:g} s "
        f"after {params['warmup_s']:g} s warm-up; cost probe {params['probe_heartbeats']:,} "
        "heartbeats",
        f"  fan-out: {params['subscribers']} subscribers of one user (online visible to "
        f"contacts): {fanout['allowed_subscribers']} on its contact list, "
        f"{fanout['hidden_subscribers']} not; {fanout['measured_changes']} changes "
        f"({params['toggles']} online/offline toggles)",
        "",
    ]
    rows = [
        ("figure", "parley", "baseline (bare gRPC)", "ratio"),
        (
            "heartbeats/s sustained",
            _num(r["presence_heartbeats_per_s"], 0),
            f"{_num(r['baseline_unary_rps'], 0)} unary rps",
            _num(r["ratios"]["presence_heartbeats_per_s / baseline_unary_rps"], 2),
        ),
        (
            "heartbeat p50 / p99 ms",
            _pair(r, "presence_heartbeat_p50_ms", "presence_heartbeat_p99_ms"),
            f"{_pair(r, 'baseline_unary_p50_ms', 'baseline_unary_p99_ms')} unary",
            _num(r["ratios"]["presence_heartbeat_p50_ms / baseline_unary_p50_ms"], 2),
        ),
        (
            "Redis script calls / commands per heartbeat",
            f"{_num(r['presence_redis_scripts_per_heartbeat'], 3)} / "
            f"{_num(r['presence_redis_commands_per_heartbeat'], 3)}",
            _cost_text(heartbeat["redis_cost"]),
            "",
        ),
        (
            "CPU us per heartbeat svc_presence / redis",
            f"{_num(r['presence_svc_cpu_us_per_heartbeat'])} / "
            f"{_num(r['presence_redis_cpu_us_per_heartbeat'])}",
            "",
            "",
        ),
        (
            "watched user's renewal: commands, events",
            f"{_num((renewal['redis_cost'] or {}).get('commands_per_unit'), 3)}, "
            f"{renewal['events']}",
            _cost_text(renewal["redis_cost"]),
            "",
        ),
        *_change_rows(r, "online"),
        *_change_rows(r, "offline"),
        (
            "deliveries: allowed / hidden subscribers",
            f"{_num(r['presence_change_deliveries'])} / {r['presence_hidden_deliveries']}",
            "",
            "",
        ),
        (
            "per change: PUBLISH, gRPC events, Redis commands",
            f"{_num(r['presence_publishes_per_change'], 3)}, "
            f"{_num(r['presence_events_per_change'], 2)}, "
            f"{_num(r['presence_redis_commands_per_change'], 3)}",
            _cost_text(fanout["redis_cost"]),
            "",
        ),
        (
            "messages published on other channels meanwhile",
            _others(fanout["published_by_channel"]),
            "",
            "",
        ),
        (
            "svc_presence CPU ms per change",
            _num(r["presence_svc_cpu_ms_per_change"], 2),
            "",
            "",
        ),
    ]
    lines += _rows(rows, "<>>>")
    lines += ["", "checks:"]
    lines += [f"  {c['verdict']:4}  {c['name']}" for c in r["checks"]]
    lines += ["", *render_targets(r["targets"])]
    lines += ["", "CPU seconds per process (measurement windows; setup: all of it):"]
    cpu: Mapping[str, Mapping[str, float | None]] = r["cpu_seconds"]
    phases = [p for p in PRESENCE_PHASE_ORDER if p in cpu]
    processes = sorted({name for per in cpu.values() for name in per})
    cpu_rows: list[Sequence[str]] = [("process", *phases)]
    for name in processes:
        cpu_rows.append((name, *(_num(cpu[p].get(name), 2) for p in phases)))
    lines += _rows(cpu_rows, "<" + ">" * len(phases))
    if r["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in r["warnings"]]
    return "\n".join(lines)
