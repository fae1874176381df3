"""The media scenario's report: one JSON-ready object, and the table rendered
from it. Figures are named per size (``1mib``, ``16mib``): svc_media's
upload+complete and download throughput beside the bare store's PUT and
GET, the RPCs' own latencies, and where an operation's time went."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from parley_dev.bench.load import LoadResult
from parley_dev.bench.report import _num, _phase, _round, _rows
from parley_dev.bench.stats import ratio, summarize_ns
from parley_dev.bench.targets import evaluate, render_targets

MB = 1_000_000
# The four phases of each size, in the order they run.
KINDS = ("bare_put", "media_upload", "bare_get", "media_download")
# The RPCs timed inside svc_media's operations, and the phase each is in.
STEPS = {
    "create_upload": "media_upload",
    "complete_upload": "media_upload",
    "get_download": "media_download",
}


def upload_ratio(label: str) -> str:
    return f"media_upload_{label}_mb_per_s / bare_put_{label}_mb_per_s"


def download_ratio(label: str) -> str:
    return f"media_download_{label}_mb_per_s / bare_get_{label}_mb_per_s"


def headline_keys(labels: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for label in labels:
        keys += [f"{kind}_{label}_mb_per_s" for kind in KINDS]
        keys += [
            f"media_{step}_{label}_{q}_ms"
            for step in ("create_upload", "get_download")
            for q in ("p50", "p99")
        ]
    return keys


@dataclass
class SizeRun:
    label: str
    size: int
    # Parts of a svc_media upload (1: a single PUT).
    parts: int
    # KINDS -> what the phase measured.
    results: dict[str, LoadResult]
    # STEPS -> latencies (ns) of the operations that completed in their window.
    steps: dict[str, list[int]]


@dataclass
class MediaMeasurements:
    sizes: list[SizeRun]
    cpu_seconds: dict[str, dict[str, float | None]] = field(default_factory=dict)


def mb_per_s(result: LoadResult, size: int) -> float | None:
    if not result.completed:
        return None
    return result.completed * size / result.window_s / MB


def _mean_ms(samples_ns: Sequence[int]) -> float | None:
    return summarize_ns(samples_ns).mean_ms


def _cpu_ms_per_op(
    cpu: Mapping[str, Mapping[str, float | None]], phase: str, completed: int
) -> dict[str, float | None]:
    return {
        name: None if seconds is None or not completed else round(seconds * 1000 / completed, 2)
        for name, seconds in cpu.get(phase, {}).items()
    }


def _time_split(run: SizeRun, kind: str) -> dict[str, float | None]:
    """Mean ms of an operation by part: the RPCs, and the transfer as the rest."""
    whole = run.results[kind].latency.mean_ms
    steps = {step: _mean_ms(run.steps.get(step, ())) for step, k in STEPS.items() if k == kind}
    known = [v for v in steps.values() if v is not None]
    transfer = None if whole is None or len(known) < len(steps) else whole - sum(known)
    return {**{k: _round(v) for k, v in steps.items()}, "transfer": _round(transfer)}


def _size_phases(run: SizeRun, cpu: Mapping[str, Mapping[str, float | None]]) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for kind in KINDS:
        result, name = run.results[kind], f"{kind}_{run.label}"
        entry: dict[str, Any] = {
            **_phase(result),
            "bytes_per_op": run.size,
            "mb_per_s": _round(mb_per_s(result, run.size)),
            "cpu_ms_per_op": _cpu_ms_per_op(cpu, name, result.completed),
        }
        if kind.startswith("media_"):
            entry["time_split_mean_ms"] = _time_split(run, kind)
            for step, owner in STEPS.items():
                if owner == kind:
                    entry[f"{step}_latency"] = summarize_ns(run.steps.get(step, ())).as_dict()
        if kind == "media_upload":
            entry["parts_per_upload"] = run.parts
        phases[name] = entry
    return phases


def build_media_report(
    m: MediaMeasurements, *, machine: Mapping[str, Any], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    figures: dict[str, float | None] = {}
    ratios: dict[str, float | None] = {}
    phases: dict[str, Any] = {}
    for run in m.sizes:
        label = run.label
        for kind in KINDS:
            result = run.results[kind]
            figures[f"{kind}_{label}_mb_per_s"] = mb_per_s(result, run.size)
            figures[f"{kind}_{label}_p50_ms"] = result.latency.p50_ms
            figures[f"{kind}_{label}_p99_ms"] = result.latency.p99_ms
        for step in STEPS:
            latency = summarize_ns(run.steps.get(step, ()))
            figures[f"media_{step}_{label}_p50_ms"] = latency.p50_ms
            figures[f"media_{step}_{label}_p99_ms"] = latency.p99_ms
        ratios[upload_ratio(label)] = ratio(
            figures[f"media_upload_{label}_mb_per_s"], figures[f"bare_put_{label}_mb_per_s"]
        )
        ratios[download_ratio(label)] = ratio(
            figures[f"media_download_{label}_mb_per_s"], figures[f"bare_get_{label}_mb_per_s"]
        )
        phases.update(_size_phases(run, m.cpu_seconds))
    labels = [run.label for run in m.sizes]
    warnings = _warnings(m)
    unmeasured = [k for k in headline_keys(labels) if figures.get(k) is None]
    if unmeasured:
        warnings.insert(0, f"not measured: {', '.join(unmeasured)}")
    return {
        "scenario": "media",
        **{k: _round(v) for k, v in figures.items()},
        "ratios": {k: _round(v, 3) for k, v in ratios.items()},
        "targets": evaluate("media", {**figures, "ratios": ratios}, parameters),
        "phases": phases,
        "cpu_seconds": m.cpu_seconds,
        "machine": dict(machine),
        "parameters": dict(parameters),
        "warnings": warnings,
        "complete": not unmeasured,
    }


def _warnings(m: MediaMeasurements) -> list[str]:
    notes: list[str] = []
    for run in m.sizes:
        for kind in KINDS:
            errors = run.results[kind].errors
            if errors:
                notes.append(f"{kind}_{run.label}: errors {dict(errors)}")
    return notes


# -- terminal table ----------------------------------------------------------------------


def _pair(r: Mapping[str, Any], a: str, b: str) -> str:
    return f"{_num(r.get(a))} / {_num(r.get(b))}"


def _size_rows(r: Mapping[str, Any], label: str, size_text: str) -> list[Sequence[str]]:
    ratios = r["ratios"]
    return [
        (
            f"{size_text}: upload+complete MB/s",
            _num(r[f"media_upload_{label}_mb_per_s"]),
            f"{_num(r[f'bare_put_{label}_mb_per_s'])} PUT",
            _num(ratios[upload_ratio(label)], 2),
        ),
        (
            f"{size_text}: download MB/s",
            _num(r[f"media_download_{label}_mb_per_s"]),
            f"{_num(r[f'bare_get_{label}_mb_per_s'])} GET",
            _num(ratios[download_ratio(label)], 2),
        ),
        (
            f"{size_text}: upload p50 / p99 ms",
            _pair(r, f"media_upload_{label}_p50_ms", f"media_upload_{label}_p99_ms"),
            _pair(r, f"bare_put_{label}_p50_ms", f"bare_put_{label}_p99_ms"),
            "",
        ),
        (
            f"{size_text}: download p50 / p99 ms",
            _pair(r, f"media_download_{label}_p50_ms", f"media_download_{label}_p99_ms"),
            _pair(r, f"bare_get_{label}_p50_ms", f"bare_get_{label}_p99_ms"),
            "",
        ),
        *(
            (
                f"{size_text}: {rpc} p50 / p99 ms",
                _pair(r, f"media_{step}_{label}_p50_ms", f"media_{step}_{label}_p99_ms"),
                "",
                "",
            )
            for step, rpc in (
                ("create_upload", "CreateUpload"),
                ("complete_upload", "CompleteUpload"),
                ("get_download", "GetDownload"),
            )
        ),
    ]


def _turns(rounds: int) -> str:
    return "1 turn" if rounds == 1 else f"{rounds} turns"


def render_media(report: Mapping[str, Any]) -> str:
    r, params, machine = report, report["parameters"], report["machine"]
    lines = [
        f"parley bench --scenario media: {machine['cores']} cores, Python {machine['python']}, "
        f"loop {params['loop']}, {'quick' if params['quick'] else 'full'} run, load average "
        f"at start {machine['loadavg_at_start'][0]}, at end "
        f"{(machine.get('loadavg_at_end') or ['-'])[0]}",
        f"  {params['concurrency']} closed-loop workers per phase (one account each), sizes "
        f"{', '.join(params['sizes'])}, {params['duration_s']:g} s per phase in "
        f"{_turns(params.get('rounds', 1))} (bare and svc_media alternating), each after "
        f"{params['warmup_s']:g} s warm-up; MB = 10^6 bytes",
        "",
    ]
    rows: list[Sequence[str]] = [("figure", "svc_media", "bare S3 (presigned)", "ratio")]
    for label, size in zip(params["sizes"], params["sizes_bytes"], strict=True):
        rows += _size_rows(r, label, f"{size / (1 << 20):g} MiB")
    lines += _rows(rows, "<>>>")
    lines += ["", *render_targets(r["targets"])]
    lines += ["", "mean ms of an operation by part (transfer: the rest):"]
    split_rows: list[Sequence[str]] = [
        ("phase", "CreateUpload", "CompleteUpload", "GetDownload", "transfer")
    ]
    for name, phase in r["phases"].items():
        split = phase.get("time_split_mean_ms")
        if split:
            split_rows.append(
                (
                    name,
                    _num(split.get("create_upload")),
                    _num(split.get("complete_upload")),
                    _num(split.get("get_download")),
                    _num(split.get("transfer")),
                )
            )
    lines += _rows(split_rows, "<>>>>")
    lines += ["", "CPU ms per operation (measurement windows):"]
    phase_names = list(r["phases"])
    processes = sorted({p for ph in r["phases"].values() for p in ph["cpu_ms_per_op"]})
    cpu_rows: list[Sequence[str]] = [("process", *phase_names)]
    for name in processes:
        cpu_rows.append(
            (name, *(_num(r["phases"][ph]["cpu_ms_per_op"].get(name), 1) for ph in phase_names))
        )
    lines += _rows(cpu_rows, "<" + ">" * len(phase_names))
    if r["warnings"]:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in r["warnings"]]
    return "\n".join(lines)
