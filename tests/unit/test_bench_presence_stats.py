"""The presence scenario of parley bench: who may see a change, what the report says."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from parley_dev.cli import build_parser
from tests.bench_loads import load_result

# -- percentiles and summaries ------------------------------------------------------


def test_allowed_subscribers_are_exact_and_spread_and_offline_moments_cover_the_sweep() -> None:
    from parley_dev.bench.presence_watch import allowed_mask, offline_delays

    mask = allowed_mask(10, 5)
    assert mask == [False, True] * 5
    assert sum(allowed_mask(1000, 333)) == 333 and all(allowed_mask(7, 7))
    assert not any(allowed_mask(4, 0))
    with pytest.raises(ValueError, match="between 0 and subscribers"):
        allowed_mask(3, 4)
    delays = offline_delays(50, 0.5)
    assert len(delays) == 50 and all(0 <= d < 0.5 for d in delays)
    # Every tenth of the interval gets some of them: no phase is left out.
    assert {int(d / 0.05) for d in delays} == set(range(10))


def test_published_messages_are_grouped_by_kind_of_channel() -> None:

    from parley_dev.bench.presence_watch import channel_kinds

    published = Counter({"parley:p:c:w": 4, "parley:p:k:ab12": 2, "parley:p:k:cd34": 1, "x": 1})
    assert channel_kinds(published, "parley:p:c:w") == {
        "parley:p:k:*": 3,
        "watched user's channel": 4,
        "x": 1,
    }


def test_change_recorder_times_allowed_subscribers_and_counts_the_rest() -> None:
    from parley.presence.v1 import presence_pb2 as ppb
    from parley_dev.bench.presence_watch import ChangeRecorder

    def event(account: str, availability: int) -> ppb.PresenceEvent:
        return ppb.PresenceEvent(
            presences=[ppb.Presence(account_id=account, availability=availability)]
        )

    recorder = ChangeRecorder(watched="w", allowed=2)
    recorder.on_snapshot(False, ppb.PresenceEvent(presences=[ppb.Presence(account_id="w")]))
    recorder.on_snapshot(True, event("w", ppb.AVAILABILITY_OFFLINE))
    assert recorder.snapshots["hidden"] == {"AVAILABILITY_UNSPECIFIED": 1}
    assert recorder.snapshots["allowed"] == {"AVAILABILITY_OFFLINE": 1}
    started = recorder.begin(ppb.AVAILABILITY_ONLINE)
    recorder.on_change(0, True, event("w", ppb.AVAILABILITY_ONLINE), started + 5_000_000)
    recorder.on_change(0, True, event("w", ppb.AVAILABILITY_ONLINE), started + 6_000_000)
    recorder.on_change(1, True, event("w", ppb.AVAILABILITY_OFFLINE), started + 7_000_000)
    recorder.on_change(2, False, event("w", ppb.AVAILABILITY_ONLINE), started + 7_000_000)
    assert not recorder.done.is_set()
    recorder.on_change(1, True, event("w", ppb.AVAILABILITY_ONLINE), started + 9_000_000)
    assert recorder.done.is_set()
    assert sorted(recorder.end()) == [5_000_000, 9_000_000]
    assert (recorder.duplicates, recorder.unexpected, recorder.hidden_deliveries) == (1, 1, 1)
    assert recorder.events == 5
    # Outside a change, even the watched user's presence is unexpected.
    recorder.on_change(0, True, event("w", ppb.AVAILABILITY_ONLINE), started)
    assert recorder.unexpected == 2


def _presence_measurements(hidden_deliveries: int = 0) -> Any:
    from parley_dev.bench.presence_report import ChangeTiming, PresenceMeasurements, RedisCost

    ms = 1_000_000
    changes = [
        ChangeTiming("online", 2 * ms, [3 * ms, 5 * ms], 0),
        ChangeTiming("offline", 1 * ms, [200 * ms, 210 * ms], 0),
        ChangeTiming("online", 2 * ms, [4 * ms, 6 * ms], 0),
        ChangeTiming("offline", 1 * ms, [300 * ms, 320 * ms], 0),
    ]
    per_heartbeat = {"evalsha": 1000, "hset": 2000, "hget": 3000, "zadd": 1000, "pexpire": 1000}
    return PresenceMeasurements(
        baseline_unary=load_result(8000, [10.0, 12.0]),
        heartbeat=load_result(4000, [20.0, 30.0]),
        heartbeat_cost=RedisCost(1000, 1.0, per_heartbeat),
        renewal_cost=RedisCost(100, 0.2, {k: v // 10 for k, v in per_heartbeat.items()}),
        renewal_events=0,
        renewal_publishes=0,
        change_publishes={"watched user's channel": 4, "parley:p:k:*": 1},
        change_cost=RedisCost(4, 1.0, {"evalsha": 6, "publish": 5}),
        changes=changes,
        allowed=2,
        hidden=2,
        hidden_deliveries=hidden_deliveries,
        change_events=8 + hidden_deliveries,
        duplicates=0,
        unexpected=0,
        snapshots={
            "allowed": {"AVAILABILITY_OFFLINE": 2},
            "hidden": {"AVAILABILITY_UNSPECIFIED": 2},
        },
        heartbeat_db_documents={},
        fanout_db_documents={"last_seen/update": 2},
        cpu_seconds={"heartbeat": {"svc_presence": 1.0, "redis": 0.2}, "fanout": {}},
    )


_PRESENCE_PARAMS = {
    "loop": "uvloop",
    "quick": True,
    "heartbeat_users": 999,
    "concurrency": 64,
    "channels": 4,
    "duration_s": 2.0,
    "warmup_s": 0.5,
    "probe_heartbeats": 1000,
    "subscribers": 4,
    "toggles": 2,
}


def test_presence_report_has_every_figure_and_passes_its_checks() -> None:
    from parley_dev.bench.presence_report import (
        PRESENCE_HEADLINE_KEYS,
        build_presence_report,
        render_presence,
    )

    machine = {"cores": 2, "python": "3.11", "grpcio": "1.85.1", "loadavg_at_start": [0.5]}
    report = build_presence_report(
        _presence_measurements(), machine=machine, parameters=_PRESENCE_PARAMS
    )
    for key in PRESENCE_HEADLINE_KEYS:
        assert isinstance(report[key], int | float), key
    assert report["presence_heartbeats_per_s"] == 2000.0
    assert report["presence_redis_scripts_per_heartbeat"] == 1.0
    assert report["presence_redis_commands_per_heartbeat"] == 8.0
    assert report["presence_svc_cpu_us_per_heartbeat"] == 250.0
    assert report["presence_publishes_per_change"] == 1.0
    assert report["presence_events_per_change"] == 2.0
    assert report["presence_change_deliveries"] == 8
    assert report["presence_online_change_last_p50_ms"] == 5.5
    assert report["presence_offline_change_p50_ms"] == 255.0
    assert report["ratios"]["presence_heartbeats_per_s / baseline_unary_rps"] == 0.5
    assert [c["verdict"] for c in report["checks"]] == ["PASS"] * 7
    assert report["failed_checks"] == [] and report["complete"] is True
    json.dumps(report)
    table = render_presence(report)
    assert "heartbeats/s sustained" in table and "4,000 unary rps" in table
    assert "PASS  no change reached a hidden subscriber" in table
    assert "parley:p:k:* 1" in table


def test_presence_report_fails_a_change_that_reached_a_hidden_subscriber() -> None:
    from parley_dev.bench.presence_report import build_presence_report, render_presence

    machine = {"cores": 2, "python": "3.11", "grpcio": "1.85.1", "loadavg_at_start": [0.5]}
    report = build_presence_report(
        _presence_measurements(hidden_deliveries=3), machine=machine, parameters=_PRESENCE_PARAMS
    )
    assert report["presence_hidden_deliveries"] == 3
    assert report["failed_checks"] == [
        "no change reached a hidden subscriber",
        "gRPC events per change = allowed subscribers",
    ]
    assert any("hidden from" in w for w in report["warnings"])
    assert "FAIL  no change reached a hidden subscriber" in render_presence(report)


def test_presence_arguments_take_the_quick_or_full_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    from parley_dev.bench import runner, scenarios

    seen: list[runner.BenchConfig] = []
    monkeypatch.setattr(scenarios, "run_bench", lambda config: seen.append(config) or 0)

    def run(*extra: str) -> runner.BenchConfig:
        args = build_parser().parse_args(["bench", "--scenario", "presence", *extra])
        assert args.func(args) == 0
        return seen[-1]

    quick = run("--quick")
    assert (quick.presence_users, quick.presence_subscribers, quick.presence_toggles) == (
        1000,
        200,
        10,
    )
    full = run("--presence-target", "localhost:9103", "--presence-allowed", "0.25")
    assert (full.presence_users, full.presence_subscribers, full.presence_toggles) == (
        5000,
        1000,
        50,
    )
    assert full.presence_target == "127.0.0.1:9103" and full.presence_allowed_fraction == 0.25
    small = run("--presence-users", "50")
    assert small.presence_subscribers == 49
    with pytest.raises(SystemExit):
        run("--presence-users", "10", "--presence-subscribers", "10")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--presence-allowed", "0"])
