"""Domain metrics of svc_search, read from plain counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from svc_search.model import SearchStats


class SearchMetrics(Collector):
    def __init__(self, stats: SearchStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self._stats

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, text, value=value)

        yield counter("parley_search_queries", "Search pages answered.", s.queries)
        yield s.query_seconds.family(
            "parley_search_query_seconds",
            "Seconds a Search page took: the postings scans and svc_message's check.",
        )
        yield counter("parley_search_hits", "Hits returned by Search pages.", s.hits)
        yield counter(
            "parley_search_index_requests",
            "IndexMessage calls past validation and the rate limit.",
            s.index_requests,
        )
        yield counter(
            "parley_search_postings_written",
            "Postings written by IndexMessage.",
            s.postings_written,
        )
        yield counter(
            "parley_search_removals", "RemoveMessage calls that dropped postings.", s.removals
        )
        yield counter(
            "parley_search_refused_disabled",
            "IndexMessage calls refused because the conversation's server search is off.",
            s.refused_disabled,
        )
        yield counter(
            "parley_search_refused_not_sender",
            "IndexMessage calls refused because the caller did not send the message.",
            s.refused_not_sender,
        )
        yield counter(
            "parley_search_dropped_conversations",
            "Conversations whose postings were dropped because their server search was off.",
            s.dropped_conversations,
        )
        yield counter(
            "parley_search_dropped_deleted",
            "Messages whose postings were dropped because they were deleted for everyone.",
            s.dropped_deleted,
        )
        yield counter(
            "parley_search_erased_accounts",
            "Account erasures whose postings are all dropped.",
            s.erased_accounts,
        )
        yield GaugeMetricFamily(
            "parley_search_postings",
            "Posting buckets stored, one per token and hour (an estimate).",
            value=s.postings,
        )
