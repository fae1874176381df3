"""Load-based scaling decisions, metric reading, rates and pod-deletion costs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from parley_operator.scaling import (
    INT32_MAX,
    RateTracker,
    decide_replicas,
    deletion_costs,
    parse_time,
    read_metrics,
)
from parley_operator.spec import ScalingPolicy, ScalingTarget

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
STREAMS = ScalingTarget("parley_delivery_streams_open", "Gauge", 100.0)
SENDS = ScalingTarget("parley_messages_committed_total", "Rate", 50.0)


def _policy(**overrides: object) -> ScalingPolicy:
    values: dict[str, object] = {
        "min_replicas": 2,
        "max_replicas": 10,
        "targets": (STREAMS,),
        "scale_up_cooldown_seconds": 60.0,
        "scale_down_cooldown_seconds": 300.0,
        "tolerance": 0.1,
        "scale_down_max_step": 1,
    }
    values.update(overrides)
    return ScalingPolicy(**values)  # type: ignore[arg-type]


def _streams(*per_pod: float | None) -> list[dict[str, float] | None]:
    return [None if v is None else {STREAMS.metric: v} for v in per_pod]


def _decide(current: int, loads: list[dict[str, float] | None], **kwargs: object) -> int:
    policy = kwargs.pop("policy", _policy())
    last = kwargs.pop("last_scaled_at", None)
    decision = decide_replicas(
        current=current,
        policy=policy,  # type: ignore[arg-type]
        loads=loads,
        last_scaled_at=last,  # type: ignore[arg-type]
        now=NOW,
    )
    return decision.replicas


def test_scales_up_to_total_load_over_target() -> None:
    # 3 pods carrying 450 streams with 100 per pod: 5 pods.
    assert _decide(3, _streams(150, 150, 150)) == 5


def test_scale_up_is_capped_at_max() -> None:
    assert _decide(3, _streams(900, 900, 900)) == 10


def test_load_within_tolerance_leaves_replicas_alone() -> None:
    assert _decide(4, _streams(105, 105, 105, 105)) == 4
    assert _decide(4, _streams(95, 95, 95, 95)) == 4
    assert _decide(4, _streams(115, 115, 115, 115)) == 5


def test_scale_up_waits_for_its_cooldown() -> None:
    recent = NOW - timedelta(seconds=30)
    assert _decide(3, _streams(200, 200, 200), last_scaled_at=recent) == 3
    old = NOW - timedelta(seconds=61)
    assert _decide(3, _streams(200, 200, 200), last_scaled_at=old) == 6


def test_scale_down_waits_for_its_longer_cooldown_and_steps_one_pod() -> None:
    loads = _streams(10, 10, 10, 10, 10, 10)
    assert _decide(6, loads, last_scaled_at=NOW - timedelta(seconds=120)) == 6
    assert _decide(6, loads, last_scaled_at=NOW - timedelta(seconds=301)) == 5
    assert _decide(6, loads, policy=_policy(scale_down_max_step=3)) == 3


def test_scale_down_stops_at_min() -> None:
    assert _decide(3, _streams(0, 0, 0), policy=_policy(scale_down_max_step=5)) == 2


def test_scale_down_needs_every_pods_reading_scale_up_estimates_missing_ones() -> None:
    assert _decide(4, _streams(5, 5, 5, None)) == 4
    # Three pods read 200 each; the unread one is taken to carry 200 as well.
    assert _decide(4, _streams(200, 200, 200, None)) == 8


def test_no_readings_no_change_and_disabled_means_no_change() -> None:
    assert _decide(4, _streams(None, None)) == 4
    assert _decide(4, []) == 4
    assert _decide(4, _streams(900, 900), policy=_policy(enabled=False)) == 4


def test_outside_bounds_is_corrected_at_once_even_during_cooldown() -> None:
    recent = NOW - timedelta(seconds=1)
    assert _decide(1, _streams(0), last_scaled_at=recent) == 2
    assert _decide(15, _streams(0) * 15, last_scaled_at=recent) == 10


def test_the_busiest_target_decides() -> None:
    policy = _policy(targets=(STREAMS, SENDS))
    loads: list[dict[str, float] | None] = [
        {STREAMS.metric: 50, SENDS.metric: 120},
        {STREAMS.metric: 50, SENDS.metric: 120},
    ]
    # Streams want 1 pod, sends (240/s at 50/s per pod) want 5.
    decision = decide_replicas(current=2, policy=policy, loads=loads, last_scaled_at=None, now=NOW)
    assert decision.replicas == 5
    assert decision.load == {STREAMS.metric: 100, SENDS.metric: 240}
    assert "parley_messages_committed_total=240.0" in decision.reason


def _exposition() -> str:
    registry = CollectorRegistry()
    requests = Counter(
        "parley_rpc_requests", "RPCs", ["service", "method", "code"], registry=registry
    )
    requests.labels("message", "SendMessage", "OK").inc(7)
    requests.labels("message", "SendMessage", "INVALID_ARGUMENT").inc(2)
    requests.labels("message", "ListMessages", "OK").inc(30)
    Gauge("parley_delivery_streams_open", "streams", registry=registry).set(42)
    return generate_latest(registry).decode()


def test_read_metrics_sums_samples_and_filters_by_labels() -> None:
    targets = [
        STREAMS,
        ScalingTarget("parley_rpc_requests_total", "Rate", 1.0),
        ScalingTarget("parley_messages_committed_total", "Rate", 1.0),
    ]
    assert read_metrics(_exposition(), targets) == {
        "parley_delivery_streams_open": 42.0,
        "parley_rpc_requests_total": 39.0,
        "parley_messages_committed_total": 0.0,
    }
    sends = ScalingTarget("parley_rpc_requests_total", "Rate", 1.0, {"method": "SendMessage"})
    assert read_metrics(_exposition(), [sends]) == {"parley_rpc_requests_total": 9.0}


def test_read_metrics_refuses_what_is_not_an_exposition() -> None:
    with pytest.raises(ValueError, match="could not convert"):
        read_metrics("<html>{oops</html>", [STREAMS])


def test_rates_need_two_scrapes_and_survive_nothing_after_a_restart() -> None:
    tracker = RateTracker()
    targets = (STREAMS, SENDS)
    first = {STREAMS.metric: 10.0, SENDS.metric: 100.0}
    assert tracker.load("pod-a", first, targets, at=1000.0) is None
    second = {STREAMS.metric: 12.0, SENDS.metric: 160.0}
    assert tracker.load("pod-a", second, targets, at=1002.0) == {
        STREAMS.metric: 12.0,
        SENDS.metric: 30.0,
    }
    restarted = {STREAMS.metric: 0.0, SENDS.metric: 5.0}
    assert tracker.load("pod-a", restarted, targets, at=1004.0) is None
    # Gauges alone need no history.
    assert tracker.load("pod-b", first, (STREAMS,), at=1004.0) == {STREAMS.metric: 10.0}
    tracker.forget_except(["pod-b"])
    assert tracker.load("pod-a", second, targets, at=1006.0) is None


def test_deletion_costs_put_the_least_loaded_pods_first() -> None:
    costs = deletion_costs(
        {"busy": {STREAMS.metric: 900.4}, "idle": {STREAMS.metric: 3.0}, "unread": None},
        STREAMS,
    )
    assert costs == {"busy": 900, "idle": 3, "unread": INT32_MAX}
    assert sorted(costs, key=costs.__getitem__) == ["idle", "busy", "unread"]
    assert deletion_costs({"huge": {STREAMS.metric: 1e12}}, STREAMS) == {"huge": INT32_MAX}


def test_parse_time() -> None:
    assert parse_time(NOW.isoformat()) == NOW
    assert parse_time(None) is None
    assert parse_time("yesterday") is None
