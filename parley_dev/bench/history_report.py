"""The history scenario's report: one JSON-ready object, and the table rendered
from it. Pages of 50 per tier and direction (``history_hot_backward_p99_ms``),
the archiver's messages/s beside the bare pyarrow write of the same rows, the
bare gRPC baseline, and where the archiver's time went, step by step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parley_dev.bench.load import LoadResult
from parley_dev.bench.report import _num, _phase, _round, _rows
from parley_dev.bench.stats import ratio
from parley_dev.bench.targets import ARCHIVER_RATIO, evaluate, render_targets

READS = ("hot_backward", "cold_backward", "hot_forward", "cold_forward")
HEADLINE_KEYS = [
    *(f"history_{read}_{q}_ms" for read in READS for q in ("p50", "p99")),
    "archiver_messages_per_s",
    "bare_pyarrow_messages_per_s",
    "baseline_unary_rps",
]
# What each of the archiver's steps covers (the interval that ends at it).
STEP_MEANING = {
    "prepared": "find candidates, read their log entries (before any move)",
    "written": "encode Parquet + PUT",
    "verified": "GET the object back + check SHA-256 and row groups",
    "recorded": "manifest entries and request ids recorded",
    "advanced": "cold heads advanced",
    "deleted": "moved entries deleted from MongoDB",
}


@dataclass(frozen=True, slots=True)
class BareWrite:
    rows: int
    objects: int
    bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ArchivePass:
    moved: int
    objects: int
    bytes: int
    seconds: float
    steps: dict[str, float]
    # After the last object: the ledger's bookkeeping of the pass.
    finish_seconds: float


@dataclass
class HistoryMeasurements:
    baseline: LoadResult
    reads: dict[str, LoadResult]
    archive: ArchivePass
    # The bare write before the archiver, and after it.
    bare: list[BareWrite]
    planned_rows: int
    planned_objects: int
    cold_seqs: list[int]
    last_seqs: list[int]
    cpu_seconds: dict[str, dict[str, float | None]] = field(default_factory=dict)
    profile_files: list[str] = field(default_factory=list)
    profile_notes: list[str] = field(default_factory=list)


def _cpu_ms_per(
    cpu: Mapping[str, Mapping[str, float | None]], phase: str, count: int
) -> dict[str, float | None]:
    return {
        name: None if seconds is None or not count else round(seconds * 1000 / count, 3)
        for name, seconds in cpu.get(phase, {}).items()
    }


def build_history_report(
    m: HistoryMeasurements, *, machine: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    figures: dict[str, float | None] = {}
    phases: dict[str, Any] = {}
    for read in READS:
        result = m.reads[read]
        latency = result.latency
        figures[f"history_{read}_p50_ms"] = latency.p50_ms
        figures[f"history_{read}_p99_ms"] = latency.p99_ms
        figures[f"history_{read}_pages_per_s"] = result.rate if result.completed else None
        phases[read] = {
            **_phase(result),
            "cpu_ms_per_page": _cpu_ms_per(m.cpu_seconds, read, result.completed),
        }
    archive = m.archive
    bare_seconds = [b.seconds for b in m.bare if b.seconds > 0]
    bare_rows = m.bare[0].rows if m.bare else 0
    figures["archiver_messages_per_s"] = (
        archive.moved / archive.seconds if archive.seconds else None
    )
    # The mean of the two bare writes, one on each side of the archiver.
    figures["bare_pyarrow_messages_per_s"] = (
        bare_rows * len(bare_seconds) / sum(bare_seconds) if bare_seconds else None
    )
    figures["archived_rows"] = archive.moved
    figures["archived_objects"] = archive.objects
    figures["archived_bytes"] = archive.bytes
    baseline = m.baseline.latency
    figures["baseline_unary_rps"] = m.baseline.rate if m.baseline.completed else None
    figures["baseline_unary_p50_ms"] = baseline.p50_ms
    figures["baseline_unary_p99_ms"] = baseline.p99_ms
    ratios = {
        ARCHIVER_RATIO: ratio(
            figures["archiver_messages_per_s"], figures["bare_pyarrow_messages_per_s"]
        )
    }
    phases["archive"] = {
        "rows": archive.moved,
        "objects": archive.objects,
        "bytes": archive.bytes,
        "seconds": round(archive.seconds, 3),
        "step_seconds": archive.steps,
        "finish_seconds": archive.finish_seconds,
        "cpu_ms_per_1000_rows": {
            name: None
            if seconds is None or not archive.moved
            else round(seconds * 1e6 / archive.moved, 1)
            for name, seconds in m.cpu_seconds.get("archive", {}).items()
        },
    }
    for name, bare in zip(("bare_write", "bare_write_after"), m.bare, strict=False):
        phases[name] = {
            "rows": bare.rows,
            "objects": bare.objects,
            "bytes": bare.bytes,
            "seconds": round(bare.seconds, 3),
            "messages_per_s": round(bare.rows / bare.seconds, 1) if bare.seconds else None,
        }
    phases["baseline_unary"] = _phase(m.baseline)
    warnings = _warnings(m)
    unmeasured = [k for k in HEADLINE_KEYS if figures.get(k) is None]
    if unmeasured:
        warnings.insert(0, f"not measured: {', '.join(unmeasured)}")
    return {
        "scenario": "history",
        **{k: _round(v) for k, v in figures.items()},
        "ratios": {k: _round(v, 3) for k, v in ratios.items()},
        "targets": evaluate("history", {**figures, "ratios": ratios}, parameters),
        "phases": phases,
        "dataset": {
            "cold_seq_per_conversation": m.cold_seqs,
            "last_seq_per_conversation": m.last_seqs,
        },
        "cpu_seconds": {
            phase: {p: None if v is None else round(v, 3) for p, v in sorted(per.items())}
            for phase, per in m.cpu_seconds.items()
        },
        "machine": dict(machine),
        "parameters": dict(parameters),
        "profile_files": m.profile_files,
        "warnings": warnings,
        "complete": not unmeasured,
    }


def _warnings(m: HistoryMeasurements) -> list[str]:
    notes: list[str] = [*m.profile_notes]
    for name, result in m.reads.items():
        if result.errors:
            notes.append(f"{name}: errors {dict(result.errors)}")
    if m.baseline.errors:
        notes.append(f"baseline_unary: errors {dict(m.baseline.errors)}")
    if m.archive.moved != m.planned_rows or m.archive.objects != m.planned_objects:
        notes.append(
            f"the archiver moved {m.archive.moved} rows in {m.archive.objects} objects, the bare "
            f"write wrote {m.planned_rows} in {m.planned_objects}: not the same rows"
        )
    return notes


# -- terminal table ----------------------------------------------------------------------


def _pair(r: Mapping[str, Any], a: str, b: str) -> str:
    return f"{_num(r.get(a))} / {_num(r.get(b))}"


def render_history(report: Mapping[str, Any]) -> str:
    r, params, machine = report, report["parameters"], report["machine"]
    lines = [
        f"parley bench --scenario history: {machine['cores']} cores, Python "
        f"{machine['python']}, loop {params['loop']}, {'quick' if params['quick'] else 'full'} "
        f"run, load average at start {machine['loadavg_at_start'][0]}, at end "
        f"{(machine.get('loadavg_at_end') or ['-'])[0]}",
        f"  {params['conversations']} conversations x {params['messages_per_conversation']} "
        f"messages (seed {params['seed']}), aged {params['ages_days'][0]:g}-"
        f"{params['ages_days'][1]:g} days, hot window {params['hot_window_days']} days; "
        f"{params['readers']} readers, pages of {params['page_size']}, "
        f"{params['duration_s']:g} s per read phase after {params['warmup_s']:g} s warm-up; "
        f"recent cache {params['recent_cache_messages']} messages",
        "",
    ]
    rows: list[Sequence[str]] = [("figure", "parley", "baseline (bare gRPC)", "ratio")]
    for read in READS:
        tier, direction = read.split("_")
        rows.append(
            (
                f"page of 50 from {tier}, {direction}: p50 / p99 ms",
                _pair(r, f"history_{read}_p50_ms", f"history_{read}_p99_ms"),
                _pair(r, "baseline_unary_p50_ms", "baseline_unary_p99_ms") + " unary",
                "",
            )
        )
        rows.append(
            (
                f"  pages/s ({params['readers']} readers)",
                _num(r.get(f"history_{read}_pages_per_s")),
                f"{_num(r.get('baseline_unary_rps'))} unary rps",
                _num(ratio(r.get(f"history_{read}_pages_per_s"), r.get("baseline_unary_rps")), 2),
            )
        )
    rows.append(
        (
            "archiver messages/s (one pass)",
            _num(r.get("archiver_messages_per_s")),
            f"{_num(r.get('bare_pyarrow_messages_per_s'))} bare pyarrow",
            _num(r["ratios"].get(ARCHIVER_RATIO), 2),
        )
    )
    lines += _rows(rows, "<>>>")
    archive = r["phases"]["archive"]
    lines += [
        "",
        f"archive pass: {archive['rows']:,} rows in {archive['objects']} objects "
        f"({archive['bytes'] / 1e6:.1f} MB), {archive['seconds']:.2f} s; seconds by step "
        "(the interval that ends at it):",
    ]
    step_rows: list[Sequence[str]] = [("step", "seconds", "what")]
    for step, seconds in archive["step_seconds"].items():
        step_rows.append((step, f"{seconds:.3f}", STEP_MEANING.get(step, "")))
    step_rows.append(("finish", f"{archive['finish_seconds']:.3f}", "the pass's bookkeeping"))
    lines += _rows(step_rows, "<><")
    for name in ("bare_write", "bare_write_after"):
        bare = r["phases"].get(name)
        if bare:
            lines.append(
                f"{name}: {bare['rows']:,} rows in {bare['objects']} objects "
                f"({bare['bytes'] / 1e6:.1f} MB), {bare['seconds']:.2f} s"
            )
    lines += ["", *render_targets(r["targets"])]
    lines += ["", "CPU ms per page (reads) and per 1,000 rows (archive), measurement windows:"]
    names = [*READS, "archive"]
    processes = sorted(
        {p for n in names for p in r["phases"][n].get("cpu_ms_per_page", {})}
        | set(archive["cpu_ms_per_1000_rows"])
    )
    cpu_rows: list[Sequence[str]] = [("process", *names)]
    for process in processes:
        cells = [_num(r["phases"][n].get("cpu_ms_per_page", {}).get(process), 2) for n in READS]
        cells.append(_num(archive["cpu_ms_per_1000_rows"].get(process), 1))
        cpu_rows.append((process, *cells))
    lines += _rows(cpu_rows, "<" + ">" * len(names))
    if r.get("profile_files"):
        lines += ["", "py-spy:"] + [f"  {f}" for f in r["profile_files"]]
    if r["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in r["warnings"]]
    return "\n".join(lines)
