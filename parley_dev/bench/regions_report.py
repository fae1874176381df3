"""The regions scenario's report: one JSON-ready object, the table rendered from
it, and where the cross-region delivery time goes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parley_dev.bench.load import LoadResult, OpenLoopResult
from parley_dev.bench.regions_watch import ArrivalBook, GaugeSamples
from parley_dev.bench.report import _num, _phase, _round, _rows
from parley_dev.bench.stats import LatencySummary, summarize_ns
from parley_dev.bench.targets import evaluate, render_targets

# The phase byte of each phase's bodies (parley_dev.bench.population.BodyCodec).
PHASE_LOCAL = 4
PHASE_CROSS = 5
PHASE_LOAD = 6
REGIONS_HEADLINE_KEYS = (
    "regions_ping_direct_p50_ms",
    "regions_ping_proxy_p50_ms",
    "regions_ping_proxy_p99_ms",
    "regions_local_deliver_p50_ms",
    "regions_forward_deliver_p50_ms",
    "regions_forward_deliver_p99_ms",
    "regions_forward_send_ack_p50_ms",
    "regions_replicated_deliver_p50_ms",
    "regions_replicated_deliver_p99_ms",
    "regions_replication_lag_p50_ms",
    "regions_replication_lag_p99_ms",
    "regions_load_sends_per_s",
)
PHASE_ORDER = ("setup", "local", "cross", "load")


@dataclass
class RegionsMeasurements:
    ping_direct: LoadResult
    ping_proxy: LoadResult
    local: OpenLoopResult
    cross: OpenLoopResult
    load: OpenLoopResult
    book: ArrivalBook
    # The timed streams: alice at eu, carol at us (both in the one group), and
    # the us member of every load group.
    eu_receiver: str
    us_receiver: str
    load_receiver: str
    metric_samples: GaugeSamples
    # Per phase (cross, load): Apply calls at us, their mean handling time,
    # changes eu sent to us and changes per Apply.
    replication: dict[str, dict[str, float | None]]
    # Cross case at us: send -> us announced the replicated write on
    # parley:replicated, and that announcement -> carol's stream had it.
    send_to_replica_wake_ns: list[int]
    replica_wake_to_stream_ns: list[int]
    proxy_bytes: dict[str, Mapping[str, int]]
    cpu_seconds: dict[str, dict[str, float | None]]
    # The replicator's batch window in force (svc_message's default).
    batch_seconds: float
    stream_errors: list[str] = field(default_factory=list)


def _summary(samples_s: list[float]) -> LatencySummary:
    return summarize_ns([int(s * 1e9) for s in samples_s])


def _delivery(m: RegionsMeasurements, phase: int, account: str, **kw: bool) -> dict[str, Any]:
    summary = summarize_ns(m.book.delivery_ns(phase, account, **kw))
    return {**summary.as_dict(), "missing": m.book.missing(phase, account)}


def where_the_time_goes(
    figures: Mapping[str, float | None], batch_seconds: float
) -> dict[str, Any]:
    """Components of the p50s, each the difference of two figures of this run
    (p50s of different samples: a component can come out slightly negative).

    forwarded = one way through the us->eu proxy + the in-region send ->
    delivery + the forward's own cost (us svc_message routing the bytes, a
    second gRPC hop); replicated = forwarded + what carries the stored message
    from eu's feed to carol's stream at us. That part splits at the moment us
    announces the replicated write (parley:replicated): before it, the change
    stream read, the batch window, the member lookup, one way through the
    eu->us proxy and Apply; after it, the wake-up and the stream's resync.
    """
    names = (
        *("ping_direct", "ping_proxy", "local_deliver", "forward_deliver"),
        *("replicated_deliver", "send_to_replica_wake", "replica_wake_to_stream"),
    )
    values = [figures.get(f"regions_{name}_p50_ms") for name in names]
    if any(v is None for v in values):
        return {}
    direct, proxied, local, forwarded, replicated, to_wake, wake_to_stream = (
        float(v or 0.0) for v in values
    )
    rtt = proxied - direct
    one_way = rtt / 2
    replication = replicated - forwarded
    until_wake = to_wake - forwarded
    batch_ms = batch_seconds * 1000
    return {
        "proxy_rtt_ms": round(rtt, 2),
        "forwarded_deliver_p50_ms": round(forwarded, 2),
        "forwarded": {
            "one_way_us_to_eu_ms": round(one_way, 2),
            "in_region_send_to_delivery_ms": round(local, 2),
            "forward_overhead_ms": round(forwarded - one_way - local, 2),
        },
        "replicated_deliver_p50_ms": round(replicated, 2),
        "replicated": {
            "forwarded_deliver_ms": round(forwarded, 2),
            "replication_after_eu_delivery_ms": round(replication, 2),
            "eu_delivery_to_us_wake_ms": round(until_wake, 2),
            "of_which_batch_window_ms_at_most": round(batch_ms, 2),
            "of_which_one_way_eu_to_us_ms": round(one_way, 2),
            "of_which_feed_read_lookup_apply_ms": round(until_wake - batch_ms - one_way, 2),
            "us_wake_to_stream_ms": round(wake_to_stream, 2),
        },
        "batch_window_dominates_replication": batch_ms >= replication / 2,
    }


def build_regions_report(
    m: RegionsMeasurements, *, machine: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    book = m.book
    ping_direct, ping_proxy = m.ping_direct.latency, m.ping_proxy.latency
    local = summarize_ns(book.delivery_ns(PHASE_LOCAL, m.eu_receiver))
    local_replicated = summarize_ns(book.delivery_ns(PHASE_LOCAL, m.us_receiver))
    forward = summarize_ns(book.delivery_ns(PHASE_CROSS, m.eu_receiver))
    replicated = summarize_ns(book.delivery_ns(PHASE_CROSS, m.us_receiver))
    forward_ack = summarize_ns(book.ack_ns(PHASE_CROSS))
    local_ack = summarize_ns(book.ack_ns(PHASE_LOCAL))
    lag = summarize_ns(book.delivery_ns(PHASE_LOAD, m.load_receiver, since_ack=True))
    load_deliver = summarize_ns(book.delivery_ns(PHASE_LOAD, m.load_receiver))
    gauge = _summary(m.metric_samples.lag_seconds)
    to_wake = summarize_ns(m.send_to_replica_wake_ns)
    wake_to_stream = summarize_ns(m.replica_wake_to_stream_ns)
    backlog = m.metric_samples.backlog
    figures: dict[str, float | None] = {
        "regions_rtt_ms": float(parameters["rtt_ms"]),
        "regions_ping_direct_p50_ms": ping_direct.p50_ms,
        "regions_ping_direct_p99_ms": ping_direct.p99_ms,
        "regions_ping_proxy_p50_ms": ping_proxy.p50_ms,
        "regions_ping_proxy_p99_ms": ping_proxy.p99_ms,
        "regions_local_deliver_p50_ms": local.p50_ms,
        "regions_local_deliver_p99_ms": local.p99_ms,
        "regions_local_send_ack_p50_ms": local_ack.p50_ms,
        "regions_forward_send_ack_p50_ms": forward_ack.p50_ms,
        "regions_forward_send_ack_p99_ms": forward_ack.p99_ms,
        "regions_forward_deliver_p50_ms": forward.p50_ms,
        "regions_forward_deliver_p99_ms": forward.p99_ms,
        "regions_replicated_deliver_p50_ms": replicated.p50_ms,
        "regions_replicated_deliver_p99_ms": replicated.p99_ms,
        "regions_send_to_replica_wake_p50_ms": to_wake.p50_ms,
        "regions_send_to_replica_wake_p99_ms": to_wake.p99_ms,
        "regions_replica_wake_to_stream_p50_ms": wake_to_stream.p50_ms,
        "regions_replica_wake_to_stream_p99_ms": wake_to_stream.p99_ms,
        "regions_local_replicated_deliver_p50_ms": local_replicated.p50_ms,
        "regions_local_replicated_deliver_p99_ms": local_replicated.p99_ms,
        "regions_replication_lag_p50_ms": lag.p50_ms,
        "regions_replication_lag_p99_ms": lag.p99_ms,
        "regions_replication_lag_max_ms": lag.max_ms,
        "regions_load_deliver_p50_ms": load_deliver.p50_ms,
        "regions_load_deliver_p99_ms": load_deliver.p99_ms,
        "regions_load_sends_per_s": m.load.rate or None,
        "regions_lag_gauge_p50_ms": gauge.p50_ms,
        "regions_lag_gauge_p99_ms": gauge.p99_ms,
        "regions_lag_gauge_max_ms": gauge.max_ms,
        "regions_backlog_max": max(backlog) if backlog else None,
    }
    where = where_the_time_goes(figures, m.batch_seconds)
    if where:
        where["replicated"]["apply_at_us"] = {
            phase: m.replication.get(phase, {}) for phase in ("cross", "load")
        }
    warnings = _warnings(m)
    unmeasured = [k for k in REGIONS_HEADLINE_KEYS if figures[k] is None]
    if unmeasured:
        warnings.insert(0, f"not measured: {', '.join(unmeasured)}")
    return {
        "scenario": "regions",
        **{k: _round(v) for k, v in figures.items()},
        "ratios": {},
        "targets": evaluate("regions", figures, parameters),
        "where_the_time_goes": where,
        "phases": {
            "ping_direct": _phase(m.ping_direct),
            "ping_proxy": _phase(m.ping_proxy),
            "local": {
                **_send_phase(m.local, "send_ack_latency"),
                "deliver_eu": _delivery(m, PHASE_LOCAL, m.eu_receiver),
                "deliver_us_replicated": _delivery(m, PHASE_LOCAL, m.us_receiver),
            },
            "cross": {
                **_send_phase(m.cross, "forwarded_send_ack_latency"),
                "deliver_eu_forwarded": _delivery(m, PHASE_CROSS, m.eu_receiver),
                "deliver_us_replicated": _delivery(m, PHASE_CROSS, m.us_receiver),
                "replication": m.replication.get("cross", {}),
            },
            "load": {
                **_send_phase(m.load, "send_ack_latency"),
                "deliver_us": _delivery(m, PHASE_LOAD, m.load_receiver),
                "ack_to_us_arrival": _delivery(m, PHASE_LOAD, m.load_receiver, since_ack=True),
                "lag_gauge_ms": gauge.as_dict(),
                "backlog_samples": len(backlog),
                "backlog_max": max(backlog) if backlog else None,
                "backlog_mean": _round(sum(backlog) / len(backlog)) if backlog else None,
                "metric_scrape_failures": m.metric_samples.failures,
                "replication": m.replication.get("load", {}),
            },
        },
        "duplicates": book.duplicates,
        "proxy_bytes": m.proxy_bytes,
        "cpu_seconds": m.cpu_seconds,
        "machine": dict(machine),
        "parameters": dict(parameters),
        "stream_errors": m.stream_errors,
        "warnings": warnings,
        "complete": not unmeasured,
    }


def _send_phase(result: OpenLoopResult, latency: str) -> dict[str, Any]:
    return {
        **_phase(result, latency=latency),
        "offered_rps": round(result.offered_rps, 2),
        "scheduled": result.scheduled,
        "shed": result.shed,
        "scheduler_lag": result.lag.as_dict(),
    }


def _warnings(m: RegionsMeasurements) -> list[str]:
    notes: list[str] = []
    for name, result in (
        ("ping_direct", m.ping_direct),
        ("ping_proxy", m.ping_proxy),
        ("local", m.local),
        ("cross", m.cross),
        ("load", m.load),
    ):
        if result.errors:
            notes.append(f"{name}: errors {dict(result.errors)}")
        if isinstance(result, OpenLoopResult) and result.shed:
            notes.append(f"{name}: {result.shed} sends shed: the offered rate was not sustained")
    for name, phase, account in (
        ("local at eu", PHASE_LOCAL, m.eu_receiver),
        ("local at us", PHASE_LOCAL, m.us_receiver),
        ("cross at eu", PHASE_CROSS, m.eu_receiver),
        ("cross at us", PHASE_CROSS, m.us_receiver),
        ("load at us", PHASE_LOAD, m.load_receiver),
    ):
        missing = m.book.missing(phase, account)
        if missing:
            notes.append(
                f"{name}: {missing} acknowledged messages never arrived (left out of the figures)"
            )
    if m.book.duplicates:
        notes.append(f"{m.book.duplicates} duplicate arrivals")
    if not m.metric_samples.lag_seconds:
        notes.append("no parley_replication_lag_seconds sample for peer us on eu's svc_message")
    if m.stream_errors:
        notes.append(f"{len(m.stream_errors)} streams ended early: {m.stream_errors[:3]}")
    return notes


def _pair(report: Mapping[str, Any], name: str) -> str:
    return f"{_num(report[f'{name}_p50_ms'])} / {_num(report[f'{name}_p99_ms'])}"


def render_regions(report: Mapping[str, Any]) -> str:
    r, params, machine = report, report["parameters"], report["machine"]
    load = r["phases"]["load"]
    lines = [
        f"parley bench --scenario regions: {machine['cores']} cores, Python "
        f"{machine['python']}, grpcio {machine['grpcio']}, loop {params['loop']}, "
        f"{'quick' if params['quick'] else 'full'} run, load average at start "
        f"{machine['loadavg_at_start'][0]}",
        f"  regions eu and us, {params['rtt_ms']:g} ms RTT injected on both proxies; "
        f"{params['messages']} measured messages per case at {params['send_rate']:g}/s; "
        f"load {params['load_rate']:g} sends/s for {params['load_seconds']:g} s over "
        f"{params['load_groups']} eu-owned groups; replication batch window "
        f"{params['replication_batch_seconds'] * 1000:g} ms",
        "",
    ]
    rows = [
        ("figure", "p50 / p99 ms"),
        ("bare gRPC ping (health Check) straight to eu", _pair(r, "regions_ping_direct")),
        ("bare gRPC ping through the us->eu proxy", _pair(r, "regions_ping_proxy")),
        ("in-region send -> delivery at eu (baseline)", _pair(r, "regions_local_deliver")),
        ("forwarded send ack (us -> eu)", _pair(r, "regions_forward_send_ack")),
        ("forwarded send -> delivery at eu", _pair(r, "regions_forward_deliver")),
        ("forwarded send -> replicated delivery at us", _pair(r, "regions_replicated_deliver")),
        (
            "forwarded send -> us announces the replicated write",
            _pair(r, "regions_send_to_replica_wake"),
        ),
        ("us announcement -> delivery at us", _pair(r, "regions_replica_wake_to_stream")),
        ("eu send -> replicated delivery at us", _pair(r, "regions_local_replicated_deliver")),
        ("load: ack at eu -> arrival at us (replication lag)", _pair(r, "regions_replication_lag")),
        ("load: send at eu -> arrival at us", _pair(r, "regions_load_deliver")),
        ("load: parley_replication_lag_seconds samples", _pair(r, "regions_lag_gauge")),
    ]
    lines += _rows(rows, "<>")
    lines.append(
        f"  load: {_num(r['regions_load_sends_per_s'], 1)} sends/s sustained, backlog max "
        f"{_num(load['backlog_max'], 0)} (mean {_num(load['backlog_mean'], 2)}) over "
        f"{load['backlog_samples']} samples, lag max {_num(r['regions_replication_lag_max_ms'])} ms"
    )
    lines += ["", *_where_lines(r["where_the_time_goes"])]
    lines += ["", *render_targets(r["targets"])]
    lines += ["", "CPU seconds per process (measurement windows; setup: all of it):"]
    cpu: Mapping[str, Mapping[str, float | None]] = r["cpu_seconds"]
    phases = [p for p in PHASE_ORDER if p in cpu]
    processes = sorted({name for per in cpu.values() for name in per})
    cpu_rows = [("process", *phases)]
    for name in processes:
        cpu_rows.append((name, *(_num(cpu[p].get(name), 2) for p in phases)))
    lines += _rows(cpu_rows, "<" + ">" * len(phases))
    if r["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in r["warnings"]]
    return "\n".join(lines)


def _where_lines(where: Mapping[str, Any]) -> list[str]:
    if not where:
        return ["where the time goes: not known (a figure is missing)"]
    fwd, rep = where["forwarded"], where["replicated"]
    lines = [
        "where the time goes (p50s, each the difference of two figures above):",
        f"  forwarded delivery {where['forwarded_deliver_p50_ms']:.1f} ms = one way us->eu "
        f"{fwd['one_way_us_to_eu_ms']:.1f} + in-region send->delivery "
        f"{fwd['in_region_send_to_delivery_ms']:.1f} + forward overhead "
        f"{fwd['forward_overhead_ms']:.1f}",
        f"  replicated delivery {where['replicated_deliver_p50_ms']:.1f} ms = forwarded "
        f"{rep['forwarded_deliver_ms']:.1f} + replication "
        f"{rep['replication_after_eu_delivery_ms']:.1f}",
        f"    replication = until us announces it {rep['eu_delivery_to_us_wake_ms']:.1f} "
        f"(batch window up to {rep['of_which_batch_window_ms_at_most']:.0f}, one way eu->us "
        f"{rep['of_which_one_way_eu_to_us_ms']:.1f}, change stream read + member lookup + Apply "
        f"{rep['of_which_feed_read_lookup_apply_ms']:.1f}) + wake-up and stream resync "
        f"{rep['us_wake_to_stream_ms']:.1f}",
    ]
    for phase, apply in rep.get("apply_at_us", {}).items():
        if apply.get("apply_calls"):
            lines.append(
                f"    {phase}: {apply['apply_calls']:.0f} Apply calls at us, "
                f"{_num(apply['apply_mean_ms'])} ms each on average, "
                f"{_num(apply['changes_per_apply'], 1)} changes per Apply"
            )
    if where["batch_window_dominates_replication"]:
        lines.append("  the replicator's batch window is most of the replicated delivery")
    return lines
