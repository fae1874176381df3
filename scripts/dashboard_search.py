"""The search dashboard (scripts/gen_dashboards.py renders it with the others).

svc_search is the opt-in server blind index: queries (pages of a Search),
their latency (the postings scans and svc_message's one check per page),
the postings kept, IndexMessage traffic and refusals (server search off, not
the sender, rate limits). The postings gauge describes the whole region and
every svc_search process reports it, so its panel takes the highest reading.
"""

from __future__ import annotations

from dashboard_parts import (
    Dashboard,
    Panel,
    backends,
    quantile,
    rate,
    rate_limit_panel,
    rpc_panels,
    sel,
)

__all__ = ["SEARCH"]


SEARCH = Dashboard(
    "search",
    "Search",
    "svc_search: the opt-in server blind index over end-to-end encrypted history (queries, "
    "latency, postings, indexing, refusals).",
    [
        Panel(
            "Queries and hits",
            "Search pages answered per second, and the hits they returned.",
            [
                (f"sum by (region) ({rate('parley_search_queries_total')})", "{{region}} pages"),
                (f"sum by (region) ({rate('parley_search_hits_total')})", "{{region}} hits"),
            ],
            unit="ops",
        ),
        Panel(
            "Query latency",
            "Seconds a Search page took in svc_search: the postings scans of every group and "
            "svc_message's check of the candidates.",
            [
                (quantile(0.5, "parley_search_query_seconds"), "{{region}} p50"),
                (quantile(0.99, "parley_search_query_seconds"), "{{region}} p99"),
            ],
            unit="s",
        ),
        Panel(
            "Posting buckets stored",
            "Hour buckets of postings kept (one per token and hour of send time that has "
            "postings), an estimate counted every 15 s by each process.",
            [(f"max by (region) ({sel('parley_search_postings')})", "{{region}}")],
            width=6,
        ),
        Panel(
            "Index requests",
            "IndexMessage calls (a send or an edit indexed) and the postings they wrote, "
            "per second, and RemoveMessage calls that dropped postings.",
            [
                (
                    f"sum by (region) ({rate('parley_search_index_requests_total')})",
                    "{{region}} index",
                ),
                (
                    f"sum by (region) ({rate('parley_search_postings_written_total')})",
                    "{{region}} postings",
                ),
                (
                    f"sum by (region) ({rate('parley_search_removals_total')})",
                    "{{region}} removed",
                ),
            ],
            unit="ops",
        ),
        Panel(
            "Refusals",
            "IndexMessage calls refused per second: the conversation's server search is off "
            "(SEARCH_DISABLED), or the caller did not send the message (NOT_THE_SENDER).",
            [
                (
                    f"sum by (region) ({rate('parley_search_refused_disabled_total')})",
                    "{{region}} search off",
                ),
                (
                    f"sum by (region) ({rate('parley_search_refused_not_sender_total')})",
                    "{{region}} not the sender",
                ),
            ],
            unit="reqps",
        ),
        Panel(
            "Postings dropped",
            "Conversations whose postings were dropped because their server search was turned "
            "off, messages dropped because they were deleted for everyone, and account erasures "
            "finished, per second.",
            [
                (
                    f"sum by (region) ({rate('parley_search_dropped_conversations_total')})",
                    "{{region}} conversations",
                ),
                (
                    f"sum by (region) ({rate('parley_search_dropped_deleted_total')})",
                    "{{region}} deleted messages",
                ),
                (
                    f"sum by (region) ({rate('parley_search_erased_accounts_total')})",
                    "{{region}} erasures",
                ),
            ],
            unit="ops",
        ),
        *rpc_panels("search"),
        rate_limit_panel("search"),
        backends("search"),
    ],
)
