"""The regions scenario's pure parts: arrivals per stream, the replication
gauges read from a metrics page, where the time goes, and its targets."""

from __future__ import annotations

import pytest

from parley.message.v1 import messages_pb2 as mpb
from parley_dev.bench.population import BodyCodec
from parley_dev.bench.regions_report import where_the_time_goes
from parley_dev.bench.regions_watch import (
    ArrivalBook,
    parse_replication_gauges,
    parse_replication_totals,
    replication_between,
    wake_split,
)
from parley_dev.bench.targets import evaluate

MS = 1_000_000


def _message(codec: BodyCodec, *, phase: int, serial: int, measured: bool = True) -> mpb.Message:
    return mpb.Message(body=codec.encode(phase=phase, measured=measured, sent_ns=0, serial=serial))


def test_arrivals_are_timed_per_stream_from_the_send_or_its_ack() -> None:
    codec = BodyCodec(run=b"abcd", size=64)
    book = ArrivalBook(codec, receivers={"alice": "eu", "carol": "us"})
    book.acked(5, 0, sent_ns=0, acked_ns=100 * MS)
    book.acked(5, 1, sent_ns=1000 * MS, acked_ns=1100 * MS)
    book.on_message("alice", _message(codec, phase=5, serial=0), 50 * MS)
    book.on_message("carol", _message(codec, phase=5, serial=0), 400 * MS)
    book.on_message("carol", _message(codec, phase=5, serial=0), 500 * MS)
    book.on_message("carol", _message(codec, phase=5, serial=1), 1300 * MS)
    # Not timed: a warm-up message, an unknown stream, another run's body.
    book.on_message("alice", _message(codec, phase=5, serial=1, measured=False), 1 * MS)
    book.on_message("bob", _message(codec, phase=5, serial=1), 1 * MS)
    book.on_message("alice", _message(BodyCodec(run=b"wxyz", size=64), phase=5, serial=1), 1)

    assert book.duplicates == 1
    assert book.delivery_ns(5, "alice") == [50 * MS]
    assert book.delivery_ns(5, "carol") == [400 * MS, 300 * MS]
    assert book.delivery_ns(5, "carol", since_ack=True) == [300 * MS, 200 * MS]
    assert book.missing(5, "alice") == 1 and book.missing(5, "carol") == 0
    assert not book.complete(5, ["alice", "carol"]) and book.complete(5, ["carol"])
    assert sorted(book.ack_ns(5)) == [100 * MS, 100 * MS]


def test_replication_gauges_are_read_for_one_peer() -> None:
    page = "\n".join(
        [
            "# HELP parley_replication_lag_seconds Age ...",
            'parley_replication_lag_seconds{peer="ap"} 9.0',
            'parley_replication_lag_seconds{peer="us"} 0.25',
            'parley_replication_backlog{peer="us"} 12.0',
            'parley_replication_sent_changes_total{peer="us",outcome="applied"} 40.0',
        ]
    )
    assert parse_replication_gauges(page, "us") == (0.25, 12.0)
    assert parse_replication_gauges(page, "eu") == (None, None)


def test_where_the_time_goes_splits_each_delivery_into_this_runs_figures() -> None:
    figures = {
        "regions_ping_direct_p50_ms": 2.0,
        "regions_ping_proxy_p50_ms": 82.0,
        "regions_local_deliver_p50_ms": 10.0,
        "regions_forward_deliver_p50_ms": 55.0,
        "regions_replicated_deliver_p50_ms": 355.0,
        "regions_send_to_replica_wake_p50_ms": 335.0,
        "regions_replica_wake_to_stream_p50_ms": 20.0,
    }
    where = where_the_time_goes(figures, batch_seconds=0.2)
    assert where["proxy_rtt_ms"] == 80.0
    assert where["forwarded"] == {
        "one_way_us_to_eu_ms": 40.0,
        "in_region_send_to_delivery_ms": 10.0,
        "forward_overhead_ms": 5.0,
    }
    replicated = where["replicated"]
    assert replicated["replication_after_eu_delivery_ms"] == 300.0
    assert replicated["eu_delivery_to_us_wake_ms"] == 280.0
    assert replicated["of_which_feed_read_lookup_apply_ms"] == 40.0
    assert replicated["us_wake_to_stream_ms"] == 20.0
    assert where["batch_window_dominates_replication"] is True
    assert (
        where_the_time_goes(figures, batch_seconds=0.02)["batch_window_dominates_replication"]
        is False
    )
    assert where_the_time_goes({**figures, "regions_local_deliver_p50_ms": None}, 0.2) == {}


@pytest.mark.parametrize(("rtt", "p99", "verdict"), [(80.0, 180.0, "PASS"), (80.0, 181.0, "MISS")])
def test_regions_targets_are_the_rtt_plus_100_ms(rtt: float, p99: float, verdict: str) -> None:
    targets = evaluate(
        "regions",
        {"regions_forward_deliver_p99_ms": p99, "regions_replicated_deliver_p99_ms": None},
        {"rtt_ms": rtt},
    )
    assert [(t["name"], t["limit"], t["verdict"]) for t in targets] == [
        ("regions_forward_deliver_p99_ms", 180.0, verdict),
        ("regions_replicated_deliver_p99_ms", 180.0, "N/A"),
    ]
    other = evaluate("regions", {"regions_forward_deliver_p99_ms": 100.0}, {"rtt_ms": 20.0})
    assert other[0]["limit"] == 120.0 and "rtt_ms=20.0 (target: 80.0)" in other[0]["caveat"]


def test_a_replicated_arrival_splits_at_the_last_announcement_before_it() -> None:
    codec = BodyCodec(run=b"abcd", size=64)
    book = ArrivalBook(codec, receivers={"carol": "us"})
    for serial, sent in enumerate((0, 100, 200)):
        book.acked(5, serial, sent_ns=sent * MS, acked_ns=(sent + 50) * MS)
    book.on_message("carol", _message(codec, phase=5, serial=0), 330 * MS)
    book.on_message("carol", _message(codec, phase=5, serial=1), 340 * MS)
    heard = [300 * MS, 600 * MS]

    def last_before(conversation_id: str, t_ns: int) -> int | None:
        earlier = [h for h in heard if h <= t_ns and conversation_id == "g"]
        return earlier[-1] if earlier else None

    to_wake, wake_to_stream = wake_split(
        book, last_before, phase=5, conversation_id="g", account="carol"
    )
    # Serial 2 never arrived; both others were woken by the announcement at 300 ms.
    assert to_wake == [300 * MS, 200 * MS]
    assert wake_to_stream == [30 * MS, 40 * MS]


def test_replication_totals_come_from_the_replicas_apply_and_the_owners_sent_changes() -> None:
    replica = "\n".join(
        [
            'parley_rpc_duration_seconds_count{method="Apply",service="x"} 4.0',
            'parley_rpc_duration_seconds_sum{method="Apply",service="x"} 0.4',
            'parley_rpc_duration_seconds_count{method="SendMessage",service="x"} 9.0',
        ]
    )
    owner = "\n".join(
        [
            'parley_replication_sent_changes_total{outcome="applied",peer="us"} 30.0',
            'parley_replication_sent_changes_total{outcome="duplicate",peer="us"} 2.0',
            'parley_replication_sent_changes_total{outcome="applied",peer="ap"} 99.0',
        ]
    )
    before = parse_replication_totals("", "", "us")
    after = parse_replication_totals(replica, owner, "us")
    assert after.apply_calls == 4 and after.changes_sent == 32
    assert replication_between(before, after) == {
        "apply_calls": 4.0,
        "apply_mean_ms": 100.0,
        "changes_sent": 32.0,
        "changes_per_apply": 8.0,
    }
    assert replication_between(None, after)["apply_calls"] is None
