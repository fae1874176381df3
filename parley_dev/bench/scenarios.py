"""Runs the scenario a ``parley bench`` names: measure, print the table, write the JSON.

Above the scenarios: each builds on :mod:`parley_dev.bench.runner` (the
messaging scenario, the config, the stack and the baselines), none on this.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc

from parley_dev.bench import history
from parley_dev.bench.config import BenchConfig, Scenario
from parley_dev.bench.group import group_bench
from parley_dev.bench.group_report import render_group
from parley_dev.bench.history_report import render_history
from parley_dev.bench.history_tiers import history_bench
from parley_dev.bench.media import media_bench
from parley_dev.bench.media_report import render_media
from parley_dev.bench.presence import presence_bench
from parley_dev.bench.presence_report import render_presence
from parley_dev.bench.regions import regions_bench
from parley_dev.bench.regions_report import render_regions
from parley_dev.bench.report import render
from parley_dev.bench.runner import bench, run_on_loop
from parley_dev.bench.search import search_bench
from parley_dev.bench.search_report import render_search
from parley_dev.probes import StackError

Measure = Callable[[BenchConfig], Awaitable[dict[str, Any]]]
Show = Callable[[Mapping[str, Any]], str]

SCENARIOS: dict[Scenario, tuple[Measure, Show]] = {
    "messaging": (bench, render),
    "group": (group_bench, render_group),
    "presence": (presence_bench, render_presence),
    "media": (media_bench, render_media),
    "history": (history_bench, render_history),
    "search": (search_bench, render_search),
    "regions": (regions_bench, render_regions),
}


def run_bench(config: BenchConfig) -> int:
    """Run everything, print the table, write the JSON; 0 when every figure was measured."""
    measure, show = SCENARIOS[config.scenario]
    try:
        report = run_on_loop(lambda: measure(config), config.loop)
    except (StackError, grpc.aio.AioRpcError, RuntimeError, TimeoutError) as exc:
        # Expected ways for a run to fail (a stack that does not start, a service
        # that refuses the load): say what happened without a traceback.
        detail = (
            f"{exc.code().name}: {exc.details()}"
            if isinstance(exc, grpc.aio.AioRpcError)
            else str(exc)
        )
        print(f"parley bench: failed: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 1
    print(show(report), flush=True)
    if config.json_path is not None:
        config.json_path.parent.mkdir(parents=True, exist_ok=True)
        config.json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {config.json_path}", flush=True)
    if config.history_path is not None:
        entry = history.history_entry(
            report,
            scenario=config.scenario,
            timestamp=datetime.now(UTC),
            git=history.git_commit(),
            machine=history.machine_facts(),
            json_path=config.json_path,
        )
        history.append(config.history_path, entry)
        print(f"appended this run to {config.history_path}", flush=True)
    # A failed check (presence: a change reached someone it is hidden from) fails the run too.
    return 0 if report["complete"] and not report.get("failed_checks") else 1
