"""The regions dashboard (scripts/gen_dashboards.py renders it with the others).

Between regions (docs/design/regions.md): replication of this region's
conversations to each peer (how far behind, how much is waiting, what the
peer did with what it was sent, snapshots), what peers replicated here, and
the requests forwarded to the region owning their conversation or refused
because it could not be reached, and the push of device revocations to
each peer (sent, failed, not yet acknowledged). The replication gauges are per process: only
the process holding a peer's lease replicates to it, so panels take the
highest reading. Peers are labelled ``peer`` (``source`` for what arrives):
``region`` is the region that was scraped.
"""

from __future__ import annotations

from dashboard_parts import RATE, Dashboard, Panel, rate, sel

__all__ = ["REGIONS"]


def _increase(name: str) -> str:
    return f"increase({sel(name)}{RATE})"


REGIONS = Dashboard(
    "regions",
    "Regions",
    "Between regions: replication lag and backlog per peer, changes sent and received, "
    "snapshots, revocations pushed, and requests forwarded to or refused for the region owning "
    "their conversation.",
    [
        Panel(
            "Replication lag by peer",
            "Age of the oldest change of this region's conversations read and not yet "
            "acknowledged by the peer (0 when idle). It grows while a peer is unreachable; "
            "the ParleyReplicationLagHigh alert watches it.",
            [
                (
                    f"max by (region, peer) ({sel('parley_replication_lag_seconds')})",
                    "{{region}} → {{peer}}",
                )
            ],
            unit="s",
        ),
        Panel(
            "Replication backlog by peer",
            "Changes read by the replicator to the peer and not yet acknowledged (at most "
            "one batch: the rest waits in the change stream).",
            [
                (
                    f"max by (region, peer) ({sel('parley_replication_backlog')})",
                    "{{region}} → {{peer}}",
                )
            ],
        ),
        Panel(
            "Changes sent by peer and outcome",
            "Changes the peer acknowledged per second: applied (it wrote something) or "
            "duplicate (it held them already, e.g. a batch sent again after a restart).",
            [
                (
                    "sum by (region, peer, outcome) "
                    f"({rate('parley_replication_sent_changes_total')})",
                    "{{region}} → {{peer}} {{outcome}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Changes received by source and outcome",
            "Changes peers replicated into this region per second, applied or duplicate.",
            [
                (
                    "sum by (region, source, outcome) "
                    f"({rate('parley_replication_received_changes_total')})",
                    "{{source}} → {{region}} {{outcome}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Snapshots by peer",
            "Snapshots sent to the peer: a new peer, or a resume point the database no longer "
            "had (a peer cut off for long). Each one re-reads every conversation routed there.",
            [
                (
                    f"sum by (region, peer) ({_increase('parley_replication_snapshots_total')})",
                    "{{region}} → {{peer}}",
                )
            ],
            stack=True,
        ),
        Panel(
            "Revocations pushed by peer and outcome",
            "Device revocations made in this region and pushed to the peer per second: sent "
            "(acknowledged) or failed (the peer could not be reached; retried with backoff). "
            "Until a peer has them it accepts the revoked devices' tokens.",
            [
                (
                    f"sum by (region, peer, outcome) ({rate('parley_revocations_pushed_total')})",
                    "{{region}} → {{peer}} {{outcome}}",
                )
            ],
            unit="ops",
        ),
        Panel(
            "Revocations not yet acknowledged by peer",
            "Revocations made in this region the peer has not acknowledged (the outbox; every "
            "svc_keys process samples the same count, so the panel takes the highest). Above 0 "
            "for long: the peer is unreachable.",
            [
                (
                    f"max by (region, peer) ({sel('parley_revocation_push_backlog')})",
                    "{{region}} → {{peer}}",
                )
            ],
        ),
        Panel(
            "Requests forwarded by peer",
            "Requests for conversations owned by the peer region, forwarded there and "
            "answered by it, per second.",
            [
                (
                    f"sum by (region, peer) ({rate('parley_region_forwards_total')})",
                    "{{region}} → {{peer}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Requests refused by peer (region unreachable)",
            "Requests answered UNAVAILABLE (REGION_UNAVAILABLE) because the peer owning their "
            "conversation could not be reached, per second; the ParleyRegionUnreachable alert "
            "watches it.",
            [
                (
                    f"sum by (region, peer) ({rate('parley_region_refusals_total')})",
                    "{{region}} → {{peer}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Forwarded share of writes refused",
            "Refusals over forwards plus refusals, per peer: 1 while the peer is cut off.",
            [
                (
                    f"sum by (region, peer) ({rate('parley_region_refusals_total')}) / "
                    f"(sum by (region, peer) ({rate('parley_region_forwards_total')}) + "
                    f"sum by (region, peer) ({rate('parley_region_refusals_total')}))",
                    "{{region}} → {{peer}}",
                )
            ],
            unit="percentunit",
            max_value=1,
        ),
    ],
)
