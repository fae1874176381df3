"""The bench's targets: each scenario's, judged against hand-computed values."""

from __future__ import annotations

import json
from typing import Any

from parley_dev.bench.targets import (
    SCENARIO_TARGETS,
    evaluate,
    judge,
    messaging_targets,
    render_targets,
)

# -- targets --------------------------------------------------------------------------


def test_judge_passes_at_the_limit_and_misses_past_it() -> None:
    assert judge(0.7, ">=", 0.7) == "PASS"
    assert judge(0.699, ">=", 0.7) == "MISS"
    assert judge(50.0, "<=", 50.0) == "PASS"
    assert judge(50.01, "<=", 50.0) == "MISS"
    assert judge(None, "<=", 50.0) == "N/A"


def _messaging(**overrides: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "deliver_p99_ms": 50.0,
        "fetch_recent_p50_ms": 5.0,
        "fetch_recent_p99_ms": 20.0,
        "ratios": {
            "send_rps / thin_durable_rps": 0.7,
            "send_ack_p99_ms / thin_durable_p99_ms": 2.0,
        },
    }
    figures.update(overrides)
    return figures


def test_messaging_targets_pass_at_their_limits_and_miss_past_them() -> None:
    params = {"readers": 16, "deliver_rate_override": None}
    at_limits = evaluate("messaging", _messaging(), params)
    assert [t["verdict"] for t in at_limits] == ["PASS"] * 5
    assert [t["name"] for t in at_limits] == [
        "send_rps / thin_durable_rps",
        "send_ack_p99_ms / thin_durable_p99_ms",
        "deliver_p99_ms",
        "fetch_recent_p50_ms",
        "fetch_recent_p99_ms",
    ]
    assert {t["comparison"] for t in at_limits} == {">=", "<="}
    assert all(t["caveat"] == "" for t in at_limits)
    past = _messaging(
        deliver_p99_ms=50.1,
        fetch_recent_p50_ms=5.1,
        fetch_recent_p99_ms=21,
        ratios={
            "send_rps / thin_durable_rps": 0.69,
            "send_ack_p99_ms / thin_durable_p99_ms": 2.01,
        },
    )
    assert [t["verdict"] for t in evaluate("messaging", past, params)] == ["MISS"] * 5


def test_a_target_without_its_figure_is_not_applicable_and_conditions_are_told() -> None:
    targets = messaging_targets(
        _messaging(ratios={}, deliver_p99_ms=None), {"readers": 4, "deliver_rate_override": 9.0}
    )
    assert [t.verdict for t in targets] == ["N/A", "N/A", "N/A", "PASS", "PASS"]
    assert "deliver_rate_override=9.0" in targets[2].caveat
    assert "readers=4 (target: 16)" in targets[3].caveat


def test_group_and_presence_targets() -> None:
    group = evaluate(
        "group",
        {"group_deliver_p99_ms": 99.0},
        {"group_members": 64, "streams": 64, "send_rate": 5.0, "streams_ack": True},
    )
    assert [(t["name"], t["verdict"], t["limit"]) for t in group] == [
        ("group_deliver_p99_ms", "PASS", 100.0)
    ]
    assert "group_members=64 (target: 1024)" in group[0]["caveat"]
    presence = evaluate(
        "presence",
        {
            "presence_redis_scripts_per_heartbeat": 1.002,
            "presence_online_change_p99_ms": 62.7,
            "presence_offline_change_p99_ms": 120.0,
            "ratios": {"presence_heartbeats_per_s / baseline_unary_rps": 0.45},
        },
        {},
    )
    assert [t["verdict"] for t in presence] == ["PASS", "PASS", "PASS", "MISS"]
    assert set(SCENARIO_TARGETS) == {
        *("messaging", "group", "presence", "media", "history", "search", "regions")
    }


def test_history_targets_judge_each_tier_and_direction_and_the_archiver() -> None:
    history = evaluate(
        "history",
        {
            "history_hot_backward_p99_ms": 10.0,
            "history_hot_forward_p99_ms": 10.5,
            "history_cold_backward_p99_ms": 499.0,
            "ratios": {"archiver_messages_per_s / bare_pyarrow_messages_per_s": 0.5},
        },
        {"readers": 4},
    )
    assert [(t["name"], t["limit"], t["verdict"]) for t in history] == [
        ("history_hot_backward_p99_ms", 10.0, "PASS"),
        ("history_hot_forward_p99_ms", 10.0, "MISS"),
        ("history_cold_backward_p99_ms", 500.0, "PASS"),
        ("history_cold_forward_p99_ms", 500.0, "N/A"),
        ("archiver_messages_per_s / bare_pyarrow_messages_per_s", 0.5, "PASS"),
    ]
    assert "4 readers" in history[0]["note"]


def test_media_targets_judge_each_size_against_the_bare_store() -> None:
    ratios = {
        "media_upload_1mib_mb_per_s / bare_put_1mib_mb_per_s": 0.8,
        "media_download_1mib_mb_per_s / bare_get_1mib_mb_per_s": 0.79,
        "media_upload_16mib_mb_per_s / bare_put_16mib_mb_per_s": 0.95,
    }
    media = evaluate("media", {"ratios": ratios}, {"sizes_bytes": [1 << 20, 16 << 20]})
    assert [(t["name"].split(" / ")[0], t["verdict"]) for t in media] == [
        ("media_upload_1mib_mb_per_s", "PASS"),
        ("media_download_1mib_mb_per_s", "MISS"),
        ("media_upload_16mib_mb_per_s", "PASS"),
        ("media_download_16mib_mb_per_s", "N/A"),
    ]
    assert {t["limit"] for t in media} == {0.8} and all(t["caveat"] == "" for t in media)
    # Other sizes are judged too, and told apart from the stated ones.
    small = evaluate("media", {"ratios": {}}, {"sizes_bytes": [1 << 18]})
    assert [t["name"] for t in small] == [
        "media_upload_262144b_mb_per_s / bare_put_262144b_mb_per_s",
        "media_download_262144b_mb_per_s / bare_get_262144b_mb_per_s",
    ]
    assert "sizes=['262144b'] (target: ['1mib', '16mib'])" in small[0]["caveat"]


def test_every_target_entry_is_well_formed_and_rendered() -> None:
    targets = evaluate("messaging", _messaging(deliver_p99_ms=80.0), {"readers": 8})
    for target in targets:
        assert {"name", "value", "limit", "comparison", "unit", "verdict"} <= target.keys()
    json.dumps(targets)
    lines = render_targets(targets)
    assert lines[0] == "targets:"
    assert "  MISS  deliver_p99_ms <= 50 ms  (measured 80 ms); at half the max send rate" in lines
    assert any("this run differs: readers=8" in line for line in lines)
