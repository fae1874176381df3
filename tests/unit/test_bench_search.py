"""The search scenario's pure parts: its targets, the report built from
measurements, the dataset and queries it makes with the SDK's code, the
sampled load loop, and what it reads of metrics and query plans."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from parley.search.v1 import search_pb2 as spb
from parley_dev.bench.load import NS, LoadResult
from parley_dev.bench.search import parse_histogram, plan_of, sampled_loop
from parley_dev.bench.search_data import (
    DAY_MS,
    QUERIES,
    SPAN_DAYS,
    make_dataset,
    make_queries,
    spread_times,
)
from parley_dev.bench.search_report import (
    Components,
    Loaded,
    SearchMeasurements,
    build_search_report,
    render_search,
)
from parley_dev.bench.targets import SEARCH_P99_RATIO, evaluate
from parley_sdk._blind_tokens import BlindSettings, filler_tokens

SETTINGS = BlindSettings(
    groups_per_query=4,
    tokens_per_group=4,
    min_token_bytes=4,
    max_token_bytes=32,
    max_tokens_per_message=256,
)
FULL = {"postings": 1_000_000, "local_messages": 100_000}


def _verdicts(figures: dict[str, Any], parameters: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["verdict"] for t in evaluate("search", figures, parameters)}


def test_search_targets_pass_at_their_limits_and_miss_past_them() -> None:
    at = {"search_query_p99_ms": 50.0, "local_query_p99_ms": 20.0}
    assert _verdicts(at, FULL) == {"search_query_p99_ms": "PASS", "local_query_p99_ms": "PASS"}
    past = {"search_query_p99_ms": 50.01, "local_query_p99_ms": 20.01}
    assert _verdicts(past, FULL) == {"search_query_p99_ms": "MISS", "local_query_p99_ms": "MISS"}
    assert _verdicts({}, FULL) == {"search_query_p99_ms": "N/A", "local_query_p99_ms": "N/A"}


def test_a_smaller_run_says_how_it_differs_from_the_target() -> None:
    full = evaluate("search", {"search_query_p99_ms": 1.0}, FULL)
    assert [t["caveat"] for t in full] == ["", ""]
    quick = evaluate(
        "search", {"search_query_p99_ms": 1.0}, {"postings": 50_000, "local_messages": 10_000}
    )
    assert quick[0]["caveat"] == "postings=50000 (target: 1000000)"
    assert quick[1]["caveat"] == "local_messages=10000 (target: 100000)"


def _result(ms: list[float], window_s: float = 2.0) -> LoadResult:
    return LoadResult(window_s, completed=len(ms), latencies_ns=[int(x * 1e6) for x in ms])


def _measurements(**overrides: Any) -> SearchMeasurements:
    m = SearchMeasurements(
        baseline_unary=_result([1.0] * 100),
        loaded=Loaded(
            messages=100,
            token_bytes=4,
            send_seconds=2.0,
            index_latencies_ns=[int(5e6)] * 10,
            index_seconds=0.5,
            postings_by_rpc=200,
            postings_bulk=1800,
            bulk_seconds=1.0,
            postings_stored=2000,
        ),
        search_query=_result([10.0] * 98 + [80.0] * 2),
        bare_read=_result([2.0] * 98 + [4.0] * 2),
        by_kind={"search_query": {"common_word": [int(10e6)]}, "bare_read": {}},
        empty_pages={"no_match": 3},
        handler_seconds=0.7,
        handler_queries=100,
        components=Components(
            samples={"page_of_one_token": [int(2e6)] * 4},
            windows_per_round=16,
            bare_plan={"stages": ["FETCH", "IXSCAN(token_newest_first)"], "keys_examined": 20},
        ),
        local={
            "query_p50_ms": 2.0,
            "query_p99_ms": 12.0,
            "index_msgs_per_s": 4000,
            "index_live_msgs_per_s": 800,
            "index_bytes_per_100k": {"total": 21_000_000},
            "messages": 100_100,
        },
        cpu_seconds={"search_query": {"svc_search": 0.5, "secantusdb": 1.0}},
    )
    for name, value in overrides.items():
        setattr(m, name, value)
    return m


def _report(m: SearchMeasurements, **parameters: Any) -> dict[str, Any]:
    params = {
        "quick": True,
        "loop": "asyncio",
        "postings": 2000,
        "callers": 4,
        "page_size": 20,
        "duration_s": 1.0,
        "warmup_s": 0.5,
        "rounds": 1,
        "local_messages": 100_000,
        "query_kinds": list(QUERIES),
        **parameters,
    }
    machine = {"cores": 2, "python": "3.11", "loadavg_at_start": [1.0], "loadavg_at_end": [1.5]}
    return build_search_report(m, machine=machine, parameters=params)


def test_the_report_puts_svc_search_beside_the_bare_read_and_judges_it() -> None:
    report = _report(_measurements())
    assert report["scenario"] == "search" and report["complete"] is True
    assert report["search_query_p99_ms"] == 80.0 and report["bare_read_p99_ms"] == 4.0
    assert report["ratios"][SEARCH_P99_RATIO] == 20.0
    assert report["index_message_per_s"] == 20.0 and report["bulk_postings_per_s"] == 1800.0
    assert report["local_query_p99_ms"] == 12.0
    assert report["local_index_bytes_per_100k"] == 21_000_000
    verdicts = {t["name"]: t["verdict"] for t in report["targets"]}
    assert verdicts == {"search_query_p99_ms": "MISS", "local_query_p99_ms": "PASS"}
    where = report["where_the_time_goes"]
    assert where["svc_search_handler_mean_ms"] == 7.0
    assert where["outside_handler_mean_ms"] == round(
        report["phases"]["search_query"]["latency"]["mean_ms"] - 7.0, 3
    )
    assert where["db_step_mean_ms"] == {"page_of_one_token": 2.0}
    assert report["phases"]["search_query"]["cpu_ms_per_op"] == {
        "svc_search": 5.0,
        "secantusdb": 10.0,
    }
    # A query that finds nothing is no warning; a common word without hits is.
    assert report["warnings"] == []
    text = render_search(report)
    for line in (
        "query p50 / p99 ms",
        "common_word",
        "on-device index",
        "where a query's time goes",
        "IXSCAN(token_newest_first)",
        "MISS  search_query_p99_ms <= 50 ms",
    ):
        assert line in text, line


def test_the_report_warns_of_what_went_wrong_and_is_incomplete_without_figures() -> None:
    m = _measurements(search_query=None, missed_hits={"common_word": 2})
    m.loaded.postings_stored = 1999
    report = _report(m)
    assert report["complete"] is False
    assert report["warnings"][0].startswith(
        "not measured: search_query_p50_ms, search_query_p99_ms"
    )
    assert "postings stored 1,999, loaded 2,000" in report["warnings"]
    missed = "common_word: 2 last pages without a hit for a word the messages hold"
    assert missed in report["warnings"]
    assert {t["name"]: t["verdict"] for t in report["targets"]}["search_query_p99_ms"] == "N/A"


def test_the_dataset_holds_exactly_the_postings_asked_for_with_the_sdks_tokens() -> None:
    data = make_dataset(3000, "conversation", SETTINGS)
    assert sum(len(t) for t in data.tokens) == 3000 == sum(data.counts.values())
    assert len(data.texts) == len(data.tokens) >= 3000 // 128
    # Every message carries the epoch's fillers (the SDK's message_tokens).
    fillers = filler_tokens(data.key, SETTINGS.fillers)
    assert all(set(fillers) <= set(t) for t in data.tokens[:-1])
    assert data.rare_words
    again = make_dataset(3000, "conversation", SETTINGS)
    assert again.texts == data.texts and again.key == data.key


def test_queries_have_one_shape_and_the_bare_read_takes_the_rarest_real_token() -> None:
    data = make_dataset(3000, "conversation", SETTINGS)
    queries = make_queries(data, SETTINGS)
    assert {q.kind for q in queries} == set(QUERIES)
    sizes = {q.request.ByteSize() for q in queries}
    assert len(sizes) == 1, sizes
    for q in queries:
        assert isinstance(q.request, spb.SearchRequest) and q.request.page_size == 20
        assert len(q.request.groups) == 4 and all(len(g.tokens) == 4 for g in q.request.groups)
        carried = {t for g in q.request.groups for t in g.tokens}
        assert q.token in carried
    # A small dataset need not hold every common word; "the" is in many messages.
    assert max(data.counts[q.token] for q in queries if q.kind == "common_word") > 10
    assert all(data.counts[q.token] == 0 for q in queries if q.kind == "no_match")
    # Only one-word queries of words the messages hold must find something.
    assert any(q.must_hit for q in queries if q.kind == "common_word")
    assert not any(q.must_hit for q in queries if q.kind in ("no_match", "two_words"))


def test_the_sampled_loop_runs_on_until_it_has_its_samples_but_no_longer_than_its_bound() -> None:
    async def slow(worker: int) -> None:
        await asyncio.sleep(0.05)

    async def run(min_samples: int, max_s: float) -> tuple[LoadResult, float]:
        began = time.perf_counter()
        result, window = await sampled_loop(
            2,
            slow,
            warmup_s=0.0,
            duration_s=0.1,
            min_samples=min_samples,
            max_s=max_s,
            on_start=[],
            on_end=[],
        )
        assert window.end_ns > window.start_ns
        return result, time.perf_counter() - began

    enough, took = asyncio.run(run(min_samples=12, max_s=5.0))
    assert enough.completed >= 12 and took < 2.0
    assert enough.window_s == (enough.window_s * NS) / NS > 0.1
    bounded, took = asyncio.run(run(min_samples=10_000, max_s=0.3))
    assert bounded.completed < 10_000 and took < 1.0
    assert len(bounded.latencies_ns) == bounded.completed


def test_handler_time_and_plans_are_read_from_what_the_servers_say() -> None:
    text = (
        "# HELP parley_search_query_seconds x\n"
        'parley_search_query_seconds_bucket{le="0.1"} 3.0\n'
        "parley_search_query_seconds_sum 1.5\n"
        "parley_search_query_seconds_count 4.0\n"
    )
    assert parse_histogram(text, "parley_search_query_seconds") == (1.5, 4.0)
    assert parse_histogram("other_sum 1\n", "parley_search_query_seconds") is None
    explained = {
        "queryPlanner": {
            "winningPlan": {
                "stage": "SORT",
                "inputStage": {
                    "stage": "FETCH",
                    "inputStage": {"stage": "IXSCAN", "indexName": "token_newest_first"},
                },
            }
        },
        "executionStats": {"totalKeysExamined": 900, "totalDocsExamined": 900, "nReturned": 20},
    }
    assert plan_of(explained) == {
        "stages": ["SORT", "FETCH", "IXSCAN(token_newest_first)"],
        "keys_examined": 900,
        "docs_examined": 900,
        "returned": 20,
    }


def test_send_times_spread_evenly_over_a_year_up_to_now() -> None:
    now = 1_800_000_000_000
    times = spread_times(5, now_ms=now)
    assert times == sorted(times) and times[-1] == now
    step = SPAN_DAYS * DAY_MS // 5
    assert [b - a for a, b in itertools.pairwise(times)] == [step] * 4
    assert spread_times(1, now_ms=now) == [now]
