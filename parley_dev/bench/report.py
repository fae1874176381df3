"""The bench report: one JSON-ready object, and the terminal table rendered from it.

The table is drawn from the same object that ``--json`` writes, so the two can
never disagree.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from parley_dev.bench.load import LoadResult
from parley_dev.bench.phases import DeliverOutcome
from parley_dev.bench.stats import per_second, ratio, summarize_ns
from parley_dev.bench.streams import DeliveryRecorder
from parley_dev.bench.targets import SEND_P99_RATIO, SEND_RATIO, evaluate, render_targets

HEADLINE_KEYS = (
    "send_rps",
    "send_ack_p50_ms",
    "send_ack_p99_ms",
    "deliver_p50_ms",
    "deliver_p99_ms",
    "fetch_recent_p50_ms",
    "fetch_recent_p99_ms",
    "baseline_unary_rps",
    "baseline_unary_p50_ms",
    "baseline_push_msgs_per_s",
    "thin_durable_rps",
    "thin_durable_p50_ms",
    "thin_durable_p99_ms",
)
PHASE_ORDER = (
    "baseline_unary",
    "baseline_push",
    "setup",
    "thin_durable",
    "send",
    "deliver",
    "fetch",
)


def machine_info() -> dict[str, Any]:
    try:
        uvloop_version: str | None = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uvloop_version = None
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "uvloop": uvloop_version,
        "platform": platform.platform(),
        # Others may be using the machine: the load before the run says how noisy it is.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "argv": sys.argv[1:],
    }


@dataclass
class Measurements:
    baseline_unary: LoadResult
    baseline_push: LoadResult
    send: LoadResult
    # Message events that arrived on all streams during the send window.
    send_window_events: int
    deliver: DeliverOutcome
    recorder: DeliveryRecorder
    fetch: LoadResult
    cpu_seconds: dict[str, dict[str, float | None]]
    # Phase -> collection/op -> svc_message's write commands and documents per
    # send in that phase (empty when its metrics were not reachable).
    db_writes_per_send: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # None: the stack's database was not known, so the thin durable service did not run.
    thin_durable: LoadResult | None = None
    # Batches and documents it committed in its window.
    thin_durable_batches: dict[str, int] | None = None
    stream_errors: list[str] = field(default_factory=list)
    profile_files: list[str] = field(default_factory=list)
    profile_notes: list[str] = field(default_factory=list)


def _phase(result: LoadResult, latency: str | None = "latency") -> dict[str, Any]:
    """One phase's figures; ``latency`` names its call latency (None: it has none)."""
    figures: dict[str, Any] = {
        "window_s": round(result.window_s, 3),
        "completed": result.completed,
        "per_s": round(result.rate, 1),
        "errors": dict(result.errors),
    }
    if latency is not None:
        figures[latency] = result.latency.as_dict()
    return figures


def build_report(
    m: Measurements, *, machine: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    unary, send, fetch = m.baseline_unary.latency, m.send.latency, m.fetch.latency
    thin = m.thin_durable.latency if m.thin_durable else summarize_ns([])
    thin_rps = m.thin_durable.rate if m.thin_durable else None
    deliver = summarize_ns(m.recorder.deliver_latencies_ns)
    deliver_load = m.deliver.load
    deliver_msgs_per_s = per_second(m.send_window_events, m.send.window_s)
    figures: dict[str, float | None] = {
        "send_rps": m.send.rate,
        "send_ack_p50_ms": send.p50_ms,
        "send_ack_p99_ms": send.p99_ms,
        "deliver_p50_ms": deliver.p50_ms,
        "deliver_p99_ms": deliver.p99_ms,
        "fetch_recent_p50_ms": fetch.p50_ms,
        "fetch_recent_p99_ms": fetch.p99_ms,
        "baseline_unary_rps": m.baseline_unary.rate,
        "baseline_unary_p50_ms": unary.p50_ms,
        "baseline_push_msgs_per_s": m.baseline_push.rate,
        "thin_durable_rps": thin_rps,
        "thin_durable_p50_ms": thin.p50_ms,
        "thin_durable_p99_ms": thin.p99_ms,
    }
    extra: dict[str, float | None] = {
        "baseline_unary_p99_ms": unary.p99_ms,
        "deliver_msgs_per_s": deliver_msgs_per_s,
        "fetch_recent_rps": m.fetch.rate,
    }
    ratios = {
        SEND_RATIO: ratio(m.send.rate, thin_rps),
        SEND_P99_RATIO: ratio(send.p99_ms, thin.p99_ms),
        "send_rps / baseline_unary_rps": ratio(m.send.rate, m.baseline_unary.rate),
        "send_ack_p50_ms / baseline_unary_p50_ms": ratio(send.p50_ms, unary.p50_ms),
        "deliver_msgs_per_s / baseline_push_msgs_per_s": ratio(
            deliver_msgs_per_s, m.baseline_push.rate
        ),
    }
    rounded_ratios = {k: _round(v, 3) for k, v in ratios.items()}
    targets = evaluate("messaging", {**figures, "ratios": ratios}, parameters)
    warnings = _warnings(m)
    missing = [k for k in HEADLINE_KEYS if figures[k] is None]
    if missing:
        warnings.insert(0, f"not measured: {', '.join(missing)}")
    return {
        "scenario": "messaging",
        **{k: _round(v) for k, v in figures.items()},
        **{k: _round(v) for k, v in extra.items()},
        "ratios": rounded_ratios,
        "targets": targets,
        "phases": {
            "baseline_unary": _phase(m.baseline_unary),
            "baseline_push": _phase(m.baseline_push, latency=None),
            "thin_durable": _thin_phase(m),
            "send": {**_phase(m.send), "stream_message_events": m.send_window_events},
            "deliver": {
                # Its call latency is the send ack under the offered load.
                **_phase(deliver_load, latency="send_ack_latency"),
                "offered_rps": round(deliver_load.offered_rps, 1),
                "scheduled": deliver_load.scheduled,
                "shed": deliver_load.shed,
                "acked": len(m.recorder.deliver_acked),
                "arrived": len(m.recorder.deliver_arrived),
                "missing": m.recorder.deliver_missing,
                "duplicates": m.recorder.duplicates,
                "drain_s": round(m.deliver.drain_s, 3),
                "delivery_latency": deliver.as_dict(),
                "scheduler_lag": deliver_load.lag.as_dict(),
            },
            "fetch": _phase(m.fetch),
        },
        "cpu_seconds": m.cpu_seconds,
        "db_writes_per_send": m.db_writes_per_send,
        "machine": dict(machine),
        "parameters": dict(parameters),
        "stream_errors": m.stream_errors,
        "profile": {"files": m.profile_files, "notes": m.profile_notes},
        "warnings": warnings,
        "complete": not missing,
    }


def _thin_phase(m: Measurements) -> dict[str, Any] | None:
    if m.thin_durable is None:
        return None
    batches = m.thin_durable_batches or {}
    count, documents = batches.get("batches"), batches.get("documents")
    return {
        **_phase(m.thin_durable),
        "batches": count,
        "documents_per_batch": _round(ratio(documents, count)),
    }


def _warnings(m: Measurements) -> list[str]:
    notes: list[str] = []
    thin = [("thin_durable", m.thin_durable)] if m.thin_durable else []
    for name, result in (
        ("baseline_unary", m.baseline_unary),
        ("baseline_push", m.baseline_push),
        *thin,
        ("send", m.send),
        ("deliver", m.deliver.load),
        ("fetch", m.fetch),
    ):
        if result.errors:
            notes.append(f"{name}: errors {dict(result.errors)}")
    if m.deliver.load.shed:
        notes.append(
            f"deliver: {m.deliver.load.shed} sends shed (too many in flight): "
            "the offered rate was not sustained"
        )
    if m.recorder.deliver_missing:
        notes.append(
            f"deliver: {m.recorder.deliver_missing} acknowledged messages never reached "
            "their recipient's stream (excluded from the latency figures)"
        )
    if m.recorder.duplicates:
        notes.append(f"deliver: {m.recorder.duplicates} duplicate deliveries")
    if m.stream_errors:
        notes.append(f"{len(m.stream_errors)} streams ended early: {m.stream_errors[:3]}")
    return notes


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- terminal table --------------------------------------------------------------------


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _rows(rows: Sequence[Sequence[str]], aligns: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if a == "<" else cell.rjust(w)
            for cell, w, a in zip(row, widths, aligns, strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render(report: Mapping[str, Any]) -> str:
    r, params, machine = report, report["parameters"], report["machine"]
    ratios = r["ratios"]
    deliver = r["phases"]["deliver"]
    lines = [
        f"parley bench: {machine['cores']} cores, Python {machine['python']}, "
        f"grpcio {machine['grpcio']}, loop {params['loop']}, "
        f"{'quick' if params['quick'] else 'full'} run, load average at start "
        f"{machine['loadavg_at_start'][0]}",
        f"  {params['concurrency']} senders over {params['pairs']} direct conversations, "
        f"{params['users']} users/streams, {params['readers']} readers, "
        f"{params['duration_s']:g} s per phase after {params['warmup_s']:g} s warm-up, "
        f"deliver offered {deliver['offered_rps']:,.0f}/s",
        "",
    ]
    rows = [
        ("figure", "parley", "thin durable", "ratio", "baseline (bare gRPC)", "ratio"),
        (
            "sustained sends/s (durable acks)",
            _num(r["send_rps"], 0),
            f"{_num(r['thin_durable_rps'], 0)} rps",
            _num(ratios[SEND_RATIO], 2),
            f"{_num(r['baseline_unary_rps'], 0)} unary rps",
            _num(ratios["send_rps / baseline_unary_rps"], 2),
        ),
        (
            "send ack p50 / p99 ms",
            f"{_num(r['send_ack_p50_ms'])} / {_num(r['send_ack_p99_ms'])}",
            f"{_num(r['thin_durable_p50_ms'])} / {_num(r['thin_durable_p99_ms'])}",
            _num(ratios[SEND_P99_RATIO], 2),
            f"{_num(r['baseline_unary_p50_ms'])} / {_num(r['baseline_unary_p99_ms'])} unary",
            _num(ratios["send_ack_p50_ms / baseline_unary_p50_ms"], 2),
        ),
        (
            "deliver msgs/s on streams (send phase)",
            _num(r["deliver_msgs_per_s"], 0),
            "",
            "",
            f"{_num(r['baseline_push_msgs_per_s'], 0)} push msgs/s",
            _num(ratios["deliver_msgs_per_s / baseline_push_msgs_per_s"], 2),
        ),
        (
            "delivery p50 / p99 ms (open loop)",
            f"{_num(r['deliver_p50_ms'])} / {_num(r['deliver_p99_ms'])}",
            *("", "", "", ""),
        ),
        (
            "fetch 50 newest p50 / p99 ms",
            f"{_num(r['fetch_recent_p50_ms'])} / {_num(r['fetch_recent_p99_ms'])}",
            *("", "", "", ""),
        ),
    ]
    lines += _rows(rows, "<>>>>>")
    lines += ["  (ratios: parley / thin durable p99 for latency, p50 against bare gRPC)"]
    lines += ["", *render_targets(r["targets"])]
    lines += ["", "CPU seconds per process (measurement windows; setup: all of it):"]
    cpu: Mapping[str, Mapping[str, float | None]] = r["cpu_seconds"]
    phases = [p for p in PHASE_ORDER if p in cpu]
    processes = sorted({name for per in cpu.values() for name in per})
    cpu_rows = [("process", *phases)]
    for name in processes:
        cpu_rows.append((name, *(_num(cpu[p].get(name), 2) for p in phases)))
    lines += _rows(cpu_rows, "<" + ">" * len(phases))
    writes: Mapping[str, Mapping[str, Mapping[str, float]]] = r.get("db_writes_per_send") or {}
    if any(writes.values()):
        lines += ["", "svc_message database writes per send (commands / documents):"]
        write_phases = [p for p in ("send", "deliver") if writes.get(p)]
        keys = sorted({k for p in write_phases for k in writes[p]})
        write_rows = [("collection/op", *write_phases)]
        for key in keys:
            write_rows.append(
                (
                    key,
                    *(
                        "{commands:.3f} / {documents:.3f}".format(**writes[p][key])
                        if key in writes[p]
                        else "-"
                        for p in write_phases
                    ),
                )
            )
        lines += _rows(write_rows, "<" + ">" * len(write_phases))
    if r["profile"]["files"] or r["profile"]["notes"]:
        notes = [*r["profile"]["notes"], *r["profile"]["files"]]
        lines += ["", "profile:", *(f"  {x}" for x in notes)]
    if r["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in r["warnings"]]
    return "\n".join(lines)
