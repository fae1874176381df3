"""The run history: every ``parley bench`` run, one JSON object per line, append-only.

An entry keeps what comparing runs needs (scenario, when, which commit, quick
or full, the machine, the figures, ratios and targets), not the phases' detail:
``--json`` writes that. ``--compare`` names entries as ``history:-1`` (the
newest), ``history:-2``, or ``history:0`` (the oldest).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[2]
DEFAULT_HISTORY = CHECKOUT / "bench" / "results" / "history.jsonl"
HISTORY_PREFIX = "history:"
GIT_TIMEOUT_SECONDS = 5.0


def figures_of(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's top-level numbers: its figures (flags and nested parts left out)."""
    return {
        key: value
        for key, value in report.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def git_commit(checkout: Path = CHECKOUT) -> dict[str, Any] | None:
    """HEAD of the checkout and whether its tree had changes; None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def history_entry(
    report: Mapping[str, Any],
    *,
    scenario: str,
    timestamp: datetime,
    git: Mapping[str, Any] | None,
    machine: Mapping[str, Any],
    json_path: Path | None = None,
) -> dict[str, Any]:
    parameters = report.get("parameters") or {}
    return {
        "scenario": scenario,
        "timestamp": timestamp.astimezone(UTC).isoformat(timespec="seconds"),
        "git": dict(git) if git else None,
        "run": "quick" if parameters.get("quick") else "full",
        "machine": dict(machine),
        "figures": figures_of(report),
        "ratios": dict(report.get("ratios") or {}),
        "targets": list(report.get("targets") or []),
        "complete": report.get("complete"),
        "json": str(json_path) if json_path else None,
        "parameters": dict(parameters),
    }


def append(path: Path, entry: Mapping[str, Any]) -> None:
    """One line at the end of the history; earlier lines are never rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry, sort_keys=True) + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class RunNotFound(Exception):
    """A --compare operand that names no JSON file and no history entry."""


def load_run(ref: str, history_path: Path) -> tuple[str, dict[str, Any]]:
    """A --compare operand: ``history:N`` (an index, negative from the newest) or a
    JSON file, which may be a ``--json`` report or a history entry; with its label."""
    if ref.startswith(HISTORY_PREFIX):
        index_text = ref.removeprefix(HISTORY_PREFIX)
        try:
            index = int(index_text)
        except ValueError:
            raise RunNotFound(f"{ref}: expected history:N, e.g. history:-1") from None
        entries = read(history_path)
        try:
            entry = entries[index]
        except IndexError:
            raise RunNotFound(f"{ref}: {history_path} holds {len(entries)} runs") from None
        commit = ((entry.get("git") or {}).get("commit") or "")[:10]
        return f"{ref} ({entry.get('timestamp')} {commit})".replace(" )", ")"), entry
    path = Path(ref)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunNotFound(f"{ref}: {exc}") from None
    if not isinstance(loaded, dict):
        raise RunNotFound(f"{ref}: not a JSON object")
    return ref, loaded
