"""The group scenario's report: one JSON-ready object, and the table rendered from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parley_dev.bench.fanout import FanoutRecorder
from parley_dev.bench.load import LoadResult, OpenLoopResult
from parley_dev.bench.report import _num, _phase, _round, _rows
from parley_dev.bench.stats import per_second, ratio, summarize_ns
from parley_dev.bench.targets import evaluate, render_targets

GROUP_HEADLINE_KEYS = (
    "group_deliver_p50_ms",
    "group_deliver_p99_ms",
    "group_deliver_count",
    "group_send_ack_p50_ms",
    "group_send_ack_p99_ms",
    "group_fanout_events_per_s",
    "baseline_push_msgs_per_s",
    "baseline_unary_p50_ms",
)
GROUP_PHASE_ORDER = ("baseline_unary", "baseline_push", "setup", "group_send")


@dataclass
class GroupMeasurements:
    baseline_unary: LoadResult
    baseline_push: LoadResult
    send: OpenLoopResult
    # Group message events on all streams inside the send window.
    window_events: int
    drain_s: float
    # svc_message's database documents written in the window, by "collection/op".
    documents_written: dict[str, int] | None
    recorder: FanoutRecorder
    streams: int
    cpu_seconds: dict[str, dict[str, float | None]]
    stream_errors: list[str] = field(default_factory=list)


def build_group_report(
    m: GroupMeasurements, *, machine: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    recorder, send = m.recorder, m.send
    every = summarize_ns(recorder.latencies_ns)
    last = summarize_ns(recorder.complete_latencies_ns(m.streams))
    ack, unary = send.latency, m.baseline_unary.latency
    fanout = per_second(m.window_events, send.window_s)
    missing = recorder.missing(m.streams)
    event_cpu, push_cpu = _cpu_per_event(m)
    figures: dict[str, float | None] = {
        "group_deliver_p50_ms": every.p50_ms,
        "group_deliver_p99_ms": every.p99_ms,
        "group_deliver_count": every.count or None,
        "group_deliver_last_stream_p50_ms": last.p50_ms,
        "group_deliver_last_stream_p99_ms": last.p99_ms,
        "group_send_ack_p50_ms": ack.p50_ms,
        "group_send_ack_p99_ms": ack.p99_ms,
        "group_fanout_events_per_s": fanout or None,
        "baseline_push_msgs_per_s": m.baseline_push.rate or None,
        "group_cpu_us_per_event": event_cpu,
        "baseline_push_cpu_us_per_msg": push_cpu,
        "baseline_unary_p50_ms": unary.p50_ms,
        "baseline_unary_p99_ms": unary.p99_ms,
    }
    ratios = {
        "group_fanout_events_per_s / baseline_push_msgs_per_s": ratio(fanout, m.baseline_push.rate),
        "group_send_ack_p50_ms / baseline_unary_p50_ms": ratio(ack.p50_ms, unary.p50_ms),
        "group_cpu_us_per_event / baseline_push_cpu_us_per_msg": ratio(event_cpu, push_cpu),
    }
    written = m.documents_written
    # Sends due in the window; their writes are what the window holds, give or
    # take the projector's and the acks' flush intervals at its edges.
    window_sends = send.scheduled - send.shed
    per_send = (
        sum(written.values()) / window_sends if written is not None and window_sends else None
    )
    per_write = recorder.message_events / recorder.server_events if recorder.server_events else None
    warnings = _warnings(m, missing)
    unmeasured = [k for k in GROUP_HEADLINE_KEYS if figures[k] is None]
    if unmeasured:
        warnings.insert(0, f"not measured: {', '.join(unmeasured)}")
    return {
        "scenario": "group",
        **{k: _round(v) for k, v in figures.items()},
        "ratios": {k: _round(v, 3) for k, v in ratios.items()},
        "targets": evaluate("group", {**figures, "ratios": ratios}, parameters),
        "phases": {
            "baseline_unary": _phase(m.baseline_unary),
            "baseline_push": _phase(m.baseline_push, latency=None),
            "group_send": {
                # Its call latency is the send ack at the offered rate.
                **_phase(send, latency="send_ack_latency"),
                "offered_rps": round(send.offered_rps, 2),
                "scheduled": send.scheduled,
                "shed": send.shed,
                "acked": len(recorder.acked),
                "streams": m.streams,
                "expected_deliveries": len(recorder.acked) * m.streams,
                "arrived": len(recorder.latencies_ns),
                "missing": missing,
                "duplicates": recorder.duplicates,
                "drain_s": round(m.drain_s, 3),
                "window_message_events": m.window_events,
                "delivery_latency": every.as_dict(),
                "last_stream_latency": last.as_dict(),
                "events_per_server_event": {
                    "mean": _round(per_write, 3),
                    "max": recorder.most_per_server_event,
                    "message_events": recorder.message_events,
                    "server_events": recorder.server_events,
                },
                "scheduler_lag": send.lag.as_dict(),
                "db_documents_written": written,
                "db_documents_per_send": _round(per_send),
            },
        },
        "cpu_seconds": m.cpu_seconds,
        "machine": dict(machine),
        "parameters": dict(parameters),
        "stream_errors": m.stream_errors,
        "warnings": warnings,
        "complete": not unmeasured,
    }


def _cpu_per_event(m: GroupMeasurements) -> tuple[float | None, float | None]:
    """Microseconds of CPU per delivered event: every svc_message process in the
    send window over the events the streams got in it; and the bare push
    server's per message pushed."""
    window = m.cpu_seconds.get("group_send", {})
    service = [v for name, v in window.items() if name.startswith("svc_message")]
    event_cpu = (
        sum(v for v in service if v is not None) * 1e6 / m.window_events
        if service and None not in service and m.window_events
        else None
    )
    push_seconds = m.cpu_seconds.get("baseline_push", {}).get("baseline_server")
    push_cpu = (
        push_seconds * 1e6 / m.baseline_push.completed
        if push_seconds is not None and m.baseline_push.completed
        else None
    )
    return event_cpu, push_cpu


def _warnings(m: GroupMeasurements, missing: int) -> list[str]:
    notes: list[str] = []
    for name, result in (
        ("baseline_unary", m.baseline_unary),
        ("baseline_push", m.baseline_push),
        ("group_send", m.send),
    ):
        if result.errors:
            notes.append(f"{name}: errors {dict(result.errors)}")
    if m.send.shed:
        notes.append(
            f"group_send: {m.send.shed} sends shed (too many in flight): "
            "the offered rate was not sustained"
        )
    if missing:
        notes.append(
            f"group_send: {missing} deliveries of acknowledged messages never reached "
            "their stream (excluded from the latency figures)"
        )
    if m.recorder.duplicates:
        notes.append(f"group_send: {m.recorder.duplicates} duplicate deliveries")
    if m.stream_errors:
        notes.append(f"{len(m.stream_errors)} streams ended early: {m.stream_errors[:3]}")
    return notes


def _writes(written: Mapping[str, int] | None) -> str:
    """The largest shares of the window's writes, e.g. ``messages/insert 200``."""
    if not written:
        return ""
    top = sorted(written.items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{key} {count:,}" for key, count in top)


def render_group(report: Mapping[str, Any]) -> str:
    r, params, machine = report, report["parameters"], report["machine"]
    send = r["phases"]["group_send"]
    batching = send["events_per_server_event"]
    lines = [
        f"parley bench --scenario group: {machine['cores']} cores, Python {machine['python']}, "
        f"grpcio {machine['grpcio']}, loop {params['loop']}, "
        f"{'quick' if params['quick'] else 'full'} run, load average at start "
        f"{machine['loadavg_at_start'][0]}",
        f"  a {params['group_members']}-member group, {params['streams']} live streams "
        f"({params['channels_per_target']} channels per target), the owner sends "
        f"{params['messages']} messages at {params['send_rate']:g}/s after "
        f"{params['warmup_s']:g} s warm-up; streams "
        f"{'ack' if params['streams_ack'] else 'never ack'}; {send['acked']} acked, "
        f"{send['arrived']:,} of {send['expected_deliveries']:,} deliveries timed",
        "",
    ]
    rows = [
        ("figure", "parley", "baseline (bare gRPC)", "ratio"),
        (
            "send to delivery p50 / p99 ms, every stream",
            f"{_num(r['group_deliver_p50_ms'])} / {_num(r['group_deliver_p99_ms'])}",
            "",
            "",
        ),
        (
            "send to the last stream p50 / p99 ms",
            f"{_num(r['group_deliver_last_stream_p50_ms'])} / "
            f"{_num(r['group_deliver_last_stream_p99_ms'])}",
            "",
            "",
        ),
        (
            "send ack p50 / p99 ms",
            f"{_num(r['group_send_ack_p50_ms'])} / {_num(r['group_send_ack_p99_ms'])}",
            f"{_num(r['baseline_unary_p50_ms'])} / {_num(r['baseline_unary_p99_ms'])} "
            f"unary, {params['baseline_unary_callers']} caller",
            _num(r["ratios"]["group_send_ack_p50_ms / baseline_unary_p50_ms"], 2),
        ),
        (
            "message events/s on all streams",
            _num(r["group_fanout_events_per_s"], 0),
            f"{_num(r['baseline_push_msgs_per_s'], 0)} push msgs/s, "
            f"{params['baseline_push_streams']} streams",
            _num(r["ratios"]["group_fanout_events_per_s / baseline_push_msgs_per_s"], 2),
        ),
        (
            "svc_message CPU µs per delivered event",
            _num(r.get("group_cpu_us_per_event"), 1),
            f"{_num(r.get('baseline_push_cpu_us_per_msg'), 1)} per push msg",
            _num(r["ratios"].get("group_cpu_us_per_event / baseline_push_cpu_us_per_msg"), 2),
        ),
        (
            "svc_message db documents written per send",
            _num(send["db_documents_per_send"]),
            _writes(send["db_documents_written"]),
            "",
        ),
        (
            "events per ServerEvent mean / max",
            f"{_num(batching['mean'], 2)} / {batching['max']}",
            "",
            "",
        ),
    ]
    lines += _rows(rows, "<>>>")
    lines += ["", *render_targets(r["targets"])]
    lines += ["", "CPU seconds per process (measurement windows; setup: all of it):"]
    cpu: Mapping[str, Mapping[str, float | None]] = r["cpu_seconds"]
    phases = [p for p in GROUP_PHASE_ORDER if p in cpu]
    processes = sorted({name for per in cpu.values() for name in per})
    cpu_rows = [("process", *phases)]
    for name in processes:
        cpu_rows.append((name, *(_num(cpu[p].get(name), 2) for p in phases)))
    lines += _rows(cpu_rows, "<" + ">" * len(phases))
    if r["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in r["warnings"]]
    return "\n".join(lines)
