"""``parley bench --compare A B``: what moved between two runs.

Pure: a run is a ``--json`` report or a history entry (both are read the same
way); every figure and ratio the two have in common is listed with both
values, the change in percent and, for figures with a target, both verdicts.
A change beyond the noise threshold is flagged, as better or worse when the
figure says which way is better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_THRESHOLD_PCT = 10.0
Direction = Literal["higher", "lower"]


def run_figures(run: Mapping[str, Any]) -> dict[str, float]:
    """A run's figures and ratios by name, whether a report or a history entry."""
    entry_figures = run.get("figures")
    top = entry_figures if isinstance(entry_figures, Mapping) else run
    figures = {
        key: float(value)
        for key, value in top.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    ratios = run.get("ratios")
    if isinstance(ratios, Mapping):
        figures.update(
            {k: float(v) for k, v in ratios.items() if isinstance(v, int | float) and v is not None}
        )
    return figures


def run_targets(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    targets = run.get("targets")
    if not isinstance(targets, list):
        return {}
    return {t["name"]: t for t in targets if isinstance(t, Mapping) and "name" in t}


def better_direction(name: str, target: Mapping[str, Any] | None) -> Direction | None:
    """Which way is better: from the target if there is one, else from the name's unit."""
    if target is not None:
        return "higher" if target.get("comparison") == ">=" else "lower"
    numerator = name.split(" / ")[0]
    if numerator.endswith("_ms") or "_cpu_" in numerator or "_per_heartbeat" in numerator:
        return "lower"
    if numerator.endswith(("_rps", "_per_s")):
        return "higher"
    return None


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    a: float
    b: float
    # None when A is 0: no percentage of nothing.
    change_pct: float | None
    moved: bool
    # "better" / "worse" for a flagged move whose good direction is known.
    judgement: str
    verdict_a: str | None
    verdict_b: str | None

    @property
    def verdict_changed(self) -> bool:
        return self.verdict_a is not None and self.verdict_a != self.verdict_b


def compare_runs(
    a: Mapping[str, Any], b: Mapping[str, Any], *, threshold_pct: float = DEFAULT_THRESHOLD_PCT
) -> list[Row]:
    """Every figure both runs have, in A's order."""
    figures_a, figures_b = run_figures(a), run_figures(b)
    targets_a, targets_b = run_targets(a), run_targets(b)
    rows = []
    for name, value_a in figures_a.items():
        if name not in figures_b:
            continue
        value_b = figures_b[name]
        change = None if value_a == 0 else (value_b - value_a) / abs(value_a) * 100.0
        moved = value_b != value_a if change is None else abs(change) > threshold_pct
        target = targets_b.get(name) or targets_a.get(name)
        judgement = ""
        direction = better_direction(name, target)
        if moved and direction is not None:
            went_up = value_b > value_a
            judgement = "better" if went_up == (direction == "higher") else "worse"
        rows.append(
            Row(
                name=name,
                a=value_a,
                b=value_b,
                change_pct=change,
                moved=moved,
                judgement=judgement,
                verdict_a=_verdict(targets_a.get(name)),
                verdict_b=_verdict(targets_b.get(name)),
            )
        )
    return rows


def _verdict(target: Mapping[str, Any] | None) -> str | None:
    return None if target is None else str(target.get("verdict"))


def describe(label: str, run: Mapping[str, Any]) -> str:
    """One line about a run: scenario, quick or full, commit, machine."""
    parameters = run.get("parameters") or {}
    scenario = run.get("scenario", "messaging")
    kind = run.get("run") or ("quick" if parameters.get("quick") else "full")
    git = run.get("git") or {}
    machine = run.get("machine") or {}
    cores = machine.get("cpu_count") or machine.get("cores")
    parts = [f"{scenario}, {kind} run"]
    if git.get("commit"):
        parts.append(f"commit {git['commit'][:10]}{' (dirty)' if git.get('dirty') else ''}")
    if cores:
        parts.append(f"{cores} cores")
    return f"{label}: {', '.join(parts)}"


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What makes the two runs not like for like."""
    notes = []
    if a.get("scenario", "messaging") != b.get("scenario", "messaging"):
        notes.append("the runs are of different scenarios")
    quick_a = (a.get("parameters") or {}).get("quick")
    quick_b = (b.get("parameters") or {}).get("quick")
    if quick_a != quick_b:
        notes.append("one run is quick, the other full")
    return notes


def _value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}"


def render_comparison(
    labels: Sequence[str],
    runs: Sequence[Mapping[str, Any]],
    rows: Sequence[Row],
    *,
    threshold_pct: float,
) -> str:
    a, b = runs
    lines = [describe(f"A = {labels[0]}", a), describe(f"B = {labels[1]}", b)]
    lines += [f"  ! {note}" for note in differences(a, b)]
    lines.append("")
    table = [("figure", "A", "B", "change", "", "target A -> B")]
    for row in rows:
        change = "-" if row.change_pct is None else f"{row.change_pct:+.1f}%"
        flag = f"<< {row.judgement or 'moved'}" if row.moved else ""
        verdicts = ""
        if row.verdict_a is not None or row.verdict_b is not None:
            verdicts = f"{row.verdict_a or '-'} -> {row.verdict_b or '-'}"
            if row.verdict_changed:
                verdicts += " !"
        table.append((row.name, _value(row.a), _value(row.b), change, flag, verdicts))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for cells in table:
        aligned = [
            cell.ljust(w) if i in (0, 4, 5) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append("  " + "  ".join(aligned).rstrip())
    moved = sum(r.moved for r in rows)
    lines += [
        "",
        f"{moved} of {len(rows)} figures moved beyond ±{threshold_pct:g}% "
        f"({sum(r.judgement == 'worse' for r in rows)} worse, "
        f"{sum(r.judgement == 'better' for r in rows)} better); "
        f"{sum(r.verdict_changed for r in rows)} target verdicts changed",
    ]
    return "\n".join(lines)
