"""The pieces the dashboards are made of (scripts/dashboard_panels.py): the
panel and dashboard records, PromQL helpers, and the panels every service's
dashboard repeats. Every selector has ``region=~"$region"``; the region label
is added by Prometheus when it scrapes."""

from __future__ import annotations

from dataclasses import dataclass, field

RATE = "[$__rate_interval]"
SERVER_ERRORS = "INTERNAL|UNKNOWN|DATA_LOSS|UNAVAILABLE|DEADLINE_EXCEEDED"


def sel(name: str, **labels: str) -> str:
    """``name{region=~"$region",k="v"}``; a value starting with ``~`` is a
    regex, with ``!~`` a regex the label must not match."""
    parts = ['region=~"$region"']
    for key, value in labels.items():
        if value.startswith("!~"):
            parts.append(f'{key}!~"{value[2:]}"')
        elif value.startswith("~"):
            parts.append(f'{key}=~"{value[1:]}"')
        else:
            parts.append(f'{key}="{value}"')
    return f"{name}{{{','.join(parts)}}}"


def rate(name: str, **labels: str) -> str:
    return f"rate({sel(name, **labels)}{RATE})"


def quantile(q: float, name: str, by: str = "region", **labels: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) ({rate(name + '_bucket', **labels)}))"


@dataclass
class Panel:
    title: str
    description: str
    targets: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    stack: bool = False
    max_value: float | None = None


@dataclass
class Dashboard:
    name: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)


def error_ratio(by: str, **labels: str) -> str:
    failed = rate("parley_rpc_requests_total", code="~" + SERVER_ERRORS, **labels)
    return (
        f"sum by ({by}) ({failed}) / sum by ({by}) ({rate('parley_rpc_requests_total', **labels)})"
    )


def rpc_panels(service: str) -> list[Panel]:
    return [
        Panel(
            "RPC rate by method",
            f"svc_{service} RPCs handled, all status codes.",
            [
                (
                    "sum by (region, method) "
                    f"({rate('parley_rpc_requests_total', service=service)})",
                    "{{region}} {{method}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Server-side error ratio by method",
            "Share ending INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED or DATA_LOSS "
            "(client mistakes are not counted).",
            [(error_ratio("region, method", service=service), "{{region}} {{method}}")],
            unit="percentunit",
        ),
        Panel(
            "p99 latency by method",
            "Streams count their whole life, so Connect and SubscribePresence are left out.",
            [
                (
                    quantile(
                        0.99,
                        "parley_rpc_duration_seconds",
                        by="region, method",
                        service=service,
                        method="!~Connect|SubscribePresence",
                    ),
                    "{{region}} {{method}}",
                )
            ],
            unit="s",
        ),
        Panel(
            "In flight",
            "RPCs being handled now (streams included).",
            [
                (
                    f"sum by (region, method) ({sel('parley_rpc_in_flight', service=service)})",
                    "{{region}} {{method}}",
                )
            ],
        ),
    ]


def backends(service: str) -> Panel:
    return Panel(
        "MongoDB and Redis reachable",
        "Lowest of every process's last ping (1 up, 0 down); checked every 5 s.",
        [
            (f"min by (region) ({sel('parley_mongo_up', service=service)})", "{{region}} MongoDB"),
            (f"min by (region) ({sel('parley_redis_up', service=service)})", "{{region}} Redis"),
        ],
        max_value=1,
    )


def rate_limit_panel(service: str | None = None) -> Panel:
    """Refusals per limit (``service`` or every service) and the processes
    whose limits are on local buckets because Redis did not answer."""
    labels = {} if service is None else {"service": service}
    by = "region, limit" if service else "region, service, limit"
    legend = "{{region}} {{limit}}" if service else "{{region}} {{service}} {{limit}}"
    local_by = "region" if service else "region, service"
    local_legend = "{{region}} on local buckets" if service else "{{region}} {{service}} local"
    return Panel(
        "Rate-limit refusals",
        "Requests refused per second by each abuse limit (RESOURCE_EXHAUSTED, RATE_LIMITED; "
        "docs/ARCHITECTURE.md, Abuse limits), and processes limiting on their own buckets "
        "because Redis did not answer.",
        [
            (f"sum by ({by}) ({rate('parley_rate_limited_total', **labels)})", legend),
            (f"sum by ({local_by}) ({sel('parley_rate_limit_local', **labels)})", local_legend),
        ],
        unit="reqps",
    )
