"""The search scenario's report: one JSON-ready object, and the table rendered
from it. svc_search's query latency beside the bare MongoDB read of the same
postings and the bare gRPC baseline, per query kind; how the postings were
loaded; where a query's time goes; the SDK's on-device index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parley_dev.bench.load import LoadResult
from parley_dev.bench.report import _num, _phase, _round, _rows
from parley_dev.bench.stats import per_second, ratio, summarize_ns
from parley_dev.bench.targets import SEARCH_P99_RATIO, evaluate, render_targets

HEADLINE_KEYS = (
    "search_query_p50_ms",
    "search_query_p99_ms",
    "bare_read_p50_ms",
    "bare_read_p99_ms",
    "baseline_unary_p99_ms",
    "index_message_per_s",
    "local_query_p99_ms",
    "local_index_msgs_per_s",
    "local_index_bytes_per_100k",
)


@dataclass
class Loaded:
    """How the searched conversation's postings got there."""

    messages: int
    token_bytes: int
    send_seconds: float = 0.0
    index_latencies_ns: list[int] = field(default_factory=list)
    index_seconds: float = 0.0
    postings_by_rpc: int = 0
    postings_bulk: int = 0
    bulk_seconds: float = 0.0
    postings_stored: int = 0


@dataclass
class Components:
    """One-caller timings (ns) of the database steps a query takes."""

    samples: dict[str, list[int]] = field(default_factory=dict)
    common_postings: int = 0
    filler_postings: int = 0
    # Groups of a Search (each reads its token counts first).
    windows_per_round: int = 0
    # The database's plan for the bare read (search.plan_of).
    bare_plan: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchMeasurements:
    baseline_unary: LoadResult
    loaded: Loaded
    search_query: LoadResult | None = None
    bare_read: LoadResult | None = None
    # "search_query" / "bare_read" -> query kind -> latencies (ns) in the windows.
    by_kind: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    empty_pages: dict[str, int] = field(default_factory=dict)
    # Empty last pages of one-word queries whose word the dataset holds (a fault).
    missed_hits: dict[str, int] = field(default_factory=dict)
    handler_seconds: float | None = None
    handler_queries: int | None = None
    components: Components = field(default_factory=Components)
    local: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _cpu_ms_per_op(
    cpu: Mapping[str, Mapping[str, float | None]], phase: str, completed: int
) -> dict[str, float | None]:
    return {
        name: None if seconds is None or not completed else round(seconds * 1000 / completed, 2)
        for name, seconds in cpu.get(phase, {}).items()
    }


def where_time_goes(m: SearchMeasurements) -> dict[str, Any]:
    """Client-seen mean against svc_search's own handler mean, and the
    database steps' one-caller means (ms)."""
    client = m.search_query.latency.mean_ms if m.search_query else None
    handler = (
        m.handler_seconds * 1000 / m.handler_queries
        if m.handler_seconds is not None and m.handler_queries
        else None
    )
    steps = {name: _round(summarize_ns(s).mean_ms, 3) for name, s in m.components.samples.items()}
    return {
        "search_query_mean_ms": _round(client, 3),
        "svc_search_handler_mean_ms": _round(handler, 3),
        # gRPC both ways, the padding, the bench client's own event loop.
        "outside_handler_mean_ms": _round(
            None if client is None or handler is None else client - handler, 3
        ),
        "db_step_mean_ms": steps,
        "db_step_p99_ms": {
            name: _round(summarize_ns(s).p99_ms, 3) for name, s in m.components.samples.items()
        },
        "bare_read_plan": m.components.bare_plan,
        "windows_per_round": m.components.windows_per_round,
        "common_token_postings": m.components.common_postings,
        "filler_token_postings": m.components.filler_postings,
    }


def build_search_report(
    m: SearchMeasurements, *, machine: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    loaded, local = m.loaded, m.local
    index = summarize_ns(loaded.index_latencies_ns)
    figures: dict[str, float | None] = {
        "search_query_per_s": m.search_query.rate if m.search_query else None,
        "search_query_p50_ms": m.search_query.latency.p50_ms if m.search_query else None,
        "search_query_p99_ms": m.search_query.latency.p99_ms if m.search_query else None,
        "bare_read_per_s": m.bare_read.rate if m.bare_read else None,
        "bare_read_p50_ms": m.bare_read.latency.p50_ms if m.bare_read else None,
        "bare_read_p99_ms": m.bare_read.latency.p99_ms if m.bare_read else None,
        "baseline_unary_rps": m.baseline_unary.rate,
        "baseline_unary_p50_ms": m.baseline_unary.latency.p50_ms,
        "baseline_unary_p99_ms": m.baseline_unary.latency.p99_ms,
        "index_message_per_s": (
            per_second(len(loaded.index_latencies_ns), loaded.index_seconds)
            if loaded.index_latencies_ns
            else None
        ),
        "index_message_p50_ms": index.p50_ms,
        "index_message_p99_ms": index.p99_ms,
        "send_per_s": per_second(loaded.messages, loaded.send_seconds)
        if loaded.send_seconds
        else None,
        "bulk_postings_per_s": per_second(loaded.postings_bulk, loaded.bulk_seconds)
        if loaded.bulk_seconds
        else None,
        "postings": float(loaded.postings_stored),
        "local_query_p50_ms": local.get("query_p50_ms"),
        "local_query_p99_ms": local.get("query_p99_ms"),
        "local_index_msgs_per_s": local.get("index_msgs_per_s"),
        "local_index_live_msgs_per_s": local.get("index_live_msgs_per_s"),
        "local_index_bytes_per_100k": (local.get("index_bytes_per_100k") or {}).get("total"),
    }
    ratios = {
        SEARCH_P99_RATIO: ratio(figures["search_query_p99_ms"], figures["bare_read_p99_ms"]),
    }
    by_kind = {
        side: {kind: summarize_ns(s).as_dict() for kind, s in kinds.items()}
        for side, kinds in m.by_kind.items()
    }
    phases: dict[str, Any] = {"baseline_unary": _phase(m.baseline_unary)}
    for name, result in (("bare_read", m.bare_read), ("search_query", m.search_query)):
        if result is not None:
            phases[name] = {
                **_phase(result),
                "cpu_ms_per_op": _cpu_ms_per_op(m.cpu_seconds, name, result.completed),
            }
    phases["index_message"] = {
        "completed": len(loaded.index_latencies_ns),
        "seconds": round(loaded.index_seconds, 3),
        "latency": index.as_dict(),
        "cpu_ms_per_op": _cpu_ms_per_op(
            m.cpu_seconds, "index_message", len(loaded.index_latencies_ns)
        ),
    }
    warnings = _warnings(m)
    unmeasured = [k for k in HEADLINE_KEYS if figures.get(k) is None]
    if unmeasured:
        warnings.insert(0, f"not measured: {', '.join(unmeasured)}")
    return {
        "scenario": "search",
        **{k: _round(v, 3) for k, v in figures.items()},
        "ratios": {k: _round(v, 3) for k, v in ratios.items()},
        "targets": evaluate("search", {**figures, "ratios": ratios}, parameters),
        "by_kind": by_kind,
        "empty_pages": dict(m.empty_pages),
        "missed_hits": dict(m.missed_hits),
        "dataset": {
            "messages": loaded.messages,
            "postings_stored": loaded.postings_stored,
            "postings_by_index_message": loaded.postings_by_rpc,
            "postings_bulk": loaded.postings_bulk,
            "token_bytes": loaded.token_bytes,
            "send_seconds": round(loaded.send_seconds, 2),
            "bulk_seconds": round(loaded.bulk_seconds, 2),
        },
        "where_the_time_goes": where_time_goes(m),
        "local": dict(local),
        "phases": phases,
        "cpu_seconds": m.cpu_seconds,
        "machine": dict(machine),
        "parameters": dict(parameters),
        "warnings": warnings,
        "complete": not unmeasured,
    }


def _warnings(m: SearchMeasurements) -> list[str]:
    notes: list[str] = []
    for name, result in (("search_query", m.search_query), ("bare_read", m.bare_read)):
        if result is not None and result.errors:
            notes.append(f"{name}: errors {dict(result.errors)}")
    wanted = m.loaded.postings_by_rpc + m.loaded.postings_bulk
    if m.loaded.postings_stored != wanted:
        notes.append(f"postings stored {m.loaded.postings_stored:,}, loaded {wanted:,}")
    for kind, count in m.missed_hits.items():
        notes.append(f"{kind}: {count} last pages without a hit for a word the messages hold")
    return notes


# -- terminal table ----------------------------------------------------------------------


def _pair(r: Mapping[str, Any], a: str, b: str) -> str:
    return f"{_num(r.get(a))} / {_num(r.get(b))}"


def _kind_rows(r: Mapping[str, Any]) -> list[Sequence[str]]:
    server = r["by_kind"].get("search_query", {})
    bare = r["by_kind"].get("bare_read", {})
    rows: list[Sequence[str]] = [("query kind", "svc_search p50 / p99", "bare read p50 / p99")]
    for kind in r["parameters"]["query_kinds"]:
        s, b = server.get(kind, {}), bare.get(kind, {})
        rows.append((kind, _pair(s, "p50_ms", "p99_ms"), _pair(b, "p50_ms", "p99_ms")))
    return rows


def render_search(report: Mapping[str, Any]) -> str:
    r, params, machine = report, report["parameters"], report["machine"]
    data, local, where = r["dataset"], r["local"], r["where_the_time_goes"]
    lines = [
        f"parley bench --scenario search: {machine['cores']} cores, Python {machine['python']}, "
        f"loop {params['loop']}, {'quick' if params['quick'] else 'full'} run, load average "
        f"at start {machine['loadavg_at_start'][0]}, at end "
        f"{(machine.get('loadavg_at_end') or ['-'])[0]}",
        f"  {data['postings_stored']:,} postings in one conversation ({data['messages']:,} "
        f"messages sent through SendMessage; {data['postings_by_index_message']:,} postings "
        f"through IndexMessage, {data['postings_bulk']:,} in bulk), {data['token_bytes']}-byte "
        f"tokens",
        f"  {params['callers']} closed-loop callers, pages of {params['page_size']}, "
        f"{params['duration_s']:g} s per side in {params['rounds']} turn(s) (bare read and "
        f"svc_search alternating), each after {params['warmup_s']:g} s warm-up",
        "",
    ]
    rows: list[Sequence[str]] = [
        ("figure", "svc_search", "bare MongoDB read", "bare gRPC"),
        (
            "query p50 / p99 ms",
            _pair(r, "search_query_p50_ms", "search_query_p99_ms"),
            _pair(r, "bare_read_p50_ms", "bare_read_p99_ms"),
            _pair(r, "baseline_unary_p50_ms", "baseline_unary_p99_ms"),
        ),
        (
            "queries/s",
            _num(r.get("search_query_per_s")),
            _num(r.get("bare_read_per_s")),
            _num(r.get("baseline_unary_rps")),
        ),
        (
            "IndexMessage/s, p50 / p99 ms",
            f"{_num(r.get('index_message_per_s'))}, "
            + _pair(r, "index_message_p50_ms", "index_message_p99_ms"),
            "",
            "",
        ),
    ]
    lines += _rows(rows, "<>>>")
    lines += ["", *_rows(_kind_rows(r), "<>>")]
    lines += [
        "",
        f"on-device index (SDK, SQLite FTS5), {local.get('messages', 0):,} messages: query "
        f"p50 {_num(local.get('query_p50_ms'), 2)} ms, p99 {_num(local.get('query_p99_ms'), 2)} "
        f"ms; indexing {_num(r.get('local_index_msgs_per_s'), 0)} messages/s (backfill), "
        f"{_num(r.get('local_index_live_msgs_per_s'), 0)}/s (one commit each); "
        f"{_num(r.get('local_index_bytes_per_100k'), 0)} bytes per 100k messages",
    ]
    lines += ["", *render_targets(r["targets"])]
    lines += [
        "",
        "where a query's time goes (means, ms):",
        f"  client-seen {_num(where['search_query_mean_ms'], 2)}, svc_search's handler "
        f"{_num(where['svc_search_handler_mean_ms'], 2)}, outside it "
        f"{_num(where['outside_handler_mean_ms'], 2)}",
        f"  a Search reads, for each of its {where['windows_per_round']} groups, the tokens' "
        f"counts (one read; a token never posted ends the group), then its rarest token's hour "
        f"buckets in stretches walking back from now (each 4 times the last) and the other "
        f"tokens' buckets at its candidates' hours; one caller alone:",
    ]
    step_rows: list[Sequence[str]] = [("database step", "mean ms", "p99 ms")]
    for name, mean in where["db_step_mean_ms"].items():
        step_rows.append((name, _num(mean, 2), _num(where["db_step_p99_ms"].get(name), 2)))
    lines += _rows(step_rows, "<>>")
    plan = where.get("bare_read_plan") or {}
    if plan:
        lines.append(
            f"  the database's plan for a page of the common token: "
            f"{' <- '.join(plan.get('stages', []))}; {plan.get('keys_examined')} index keys and "
            f"{plan.get('docs_examined')} documents examined for {params['page_size']} "
            f"results (reported: {plan.get('returned')})"
        )
    lines += ["", "CPU ms per operation (measurement windows):"]
    measured = [p for p in ("bare_read", "search_query", "index_message") if p in r["phases"]]
    processes = sorted({p for ph in measured for p in r["phases"][ph]["cpu_ms_per_op"]})
    cpu_rows: list[Sequence[str]] = [("process", *measured)]
    for name in processes:
        cpu_rows.append(
            (name, *(_num(r["phases"][ph]["cpu_ms_per_op"].get(name), 2) for ph in measured))
        )
    lines += _rows(cpu_rows, "<" + ">" * len(measured))
    if r["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in r["warnings"]]
    return "\n".join(lines)
