"""Every metric the dashboards and the chart's alerts query is exported.

The session stack is exercised a little (sign-up, a direct conversation, a
stream on the other svc_message process, a send, a history read, a presence
heartbeat, a media quota read, the search settings) so that labelled series
exist, then every /metrics endpoint is scraped. Each metric named in a dashboard panel or variable
(helm/parley/dashboards/*.json) or in an alert expression (the chart rendered
with the real helm, or its template read directly when helm cannot be had)
must be one of those, and each plain ``label="value"`` matcher must match an
exported series. The metrics table of docs/ARCHITECTURE.md must list exactly
the families the services export.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from parley.keys.v1 import accounts_pb2_grpc
from parley.media.v1 import media_pb2 as mepb
from parley.media.v1 import media_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley.presence.v1 import presence_pb2 as ppb
from parley.presence.v1 import presence_pb2_grpc
from parley.search.v1 import search_pb2 as spb
from parley.search.v1 import search_pb2_grpc
from parley_dev.stack import LocalStack
from tests.users import direct, open_stream, send, sign_up, synced

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
DASHBOARDS = CHART / "dashboards"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

# Series Prometheus makes itself, not the services.
SYNTHETIC = {"up"}
# Labels Prometheus adds when scraping (target labels and the chart's relabeling).
SCRAPE_LABELS = {"region", "namespace", "instance", "job", "pod", "service_name"}
SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
    "summary": ("_sum", "_count", "_created"),
}

# -- reading PromQL ----------------------------------------------------------

PROMQL_WORDS = {
    # aggregation and binary-operator modifiers, operators and literals
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "and", "or", "unless", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
NUMBER_WITH_UNIT = re.compile(r"\b\d+(\.\d+)?(ms|s|m|h|d|w|y)?\b")
# Grafana's label_values([metric or selector,] label): the label is not a metric.
LABEL_VALUES = re.compile(r"\blabel_values\(\s*(?:([^,()]*?)\s*,)?\s*\w+\s*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are neither
    functions (followed by a parenthesis), keywords, nor label names (inside
    ``{}`` or a ``by (...)``-style list)."""
    text = LABEL_VALUES.sub(lambda m: m.group(1) or " ", expr)
    text = STRING.sub('""', text)
    text = GRAFANA_VARIABLE.sub("", text)
    text = LABEL_LIST.sub(" ", text)
    text = MATCHERS.sub(" ", text)
    text = RANGES.sub(" ", text)
    text = NUMBER_WITH_UNIT.sub(" ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def equality_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) of every ``label="value"`` in a selector."""
    found = []
    for metric, body in SELECTOR.findall(GRAFANA_VARIABLE.sub("x", expr)):
        for label, op, value in MATCHER.findall(body):
            if op == "=":
                found.append((metric, label, value))
    return found


def test_metric_names_are_read_from_promql_carefully() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (region, le) "
        '(rate(parley_a_seconds_bucket{region=~"$region",method="rate(x)"}[$__rate_interval])))'
        " / on(instance) group_left(pod) "
        "max without (job) (parley_b) > bool 0.5 and parley_c offset 5m or vector(1)"
        ' unless absent(parley_d{code!~"OK"}[5m]) + label_values(parley_e, region)'
        " + label_values(job)"
    )
    assert metric_names(expr) == {
        "parley_a_seconds_bucket",
        "parley_b",
        "parley_c",
        "parley_d",
        "parley_e",
    }
    assert equality_matchers(expr) == [("parley_a_seconds_bucket", "method", "rate(x)")]


# -- what the services export ------------------------------------------------


@dataclass
class Exported:
    families: dict[str, str] = field(default_factory=dict)  # name -> type
    # sample name -> (labels, value) of every series, all processes together
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))

    def knows(self, name: str) -> bool:
        if name in self.samples or name in SYNTHETIC:
            return True
        # A gauge family with no series yet (per-peer replication gauges in a
        # stack without peers) is still exported under its own name.
        if self.families.get(name) in ("gauge", "untyped"):
            return True
        for kind, suffixes in SUFFIXES.items():
            for suffix in suffixes:
                base = name.removesuffix(suffix)
                if base != name and self.families.get(base) == kind:
                    return True
        return False

    def has_series(self, name: str, label: str, value: str) -> bool:
        return any(labels.get(label) == value for labels, _ in self.samples.get(name, ()))

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for series, value in self.samples.get(name, ())
            if all(series.get(k) == v for k, v in labels.items())
        )

    def documented_names(self) -> set[str]:
        """Family names as queried: counters with _total."""
        return {
            name + "_total" if kind == "counter" else name
            for name, kind in self.families.items()
            # The text format shows a counter's or histogram's _created as a gauge of its own.
            if name.startswith("parley_") and not name.endswith("_created")
        }


def scrape(urls: Iterable[str]) -> Exported:
    exported = Exported()
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as reply:
            exported.add(reply.read().decode())
    return exported


async def exercise(stack: LocalStack) -> None:
    async with (
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
        grpc.aio.insecure_channel(stack.message_targets[0]) as a_channel,
        grpc.aio.insecure_channel(stack.message_targets[1]) as b_channel,
        grpc.aio.insecure_channel(stack.presence_target) as presence_channel,
        grpc.aio.insecure_channel(stack.media_target) as media_channel,
        grpc.aio.insecure_channel(stack.search_target) as search_channel,
    ):
        keys = accounts_pb2_grpc.AccountServiceStub(keys_channel)
        on_a = messages_pb2_grpc.MessageServiceStub(a_channel)
        on_b = messages_pb2_grpc.MessageServiceStub(b_channel)
        presence = presence_pb2_grpc.PresenceServiceStub(presence_channel)
        alice, bob = await sign_up(keys), await sign_up(keys)
        conversation = await direct(on_a, alice, bob)
        stream = await open_stream(on_b, bob)
        try:
            await stream.wait_for(synced)
            await send(on_a, alice, conversation, b"measured")
            await stream.wait_for(lambda s: len(s.messages(conversation)) == 1)
        finally:
            await stream.close()
        for _ in range(2):  # the first read fills the recent cache, the second hits it
            await on_a.ListMessages(
                mpb.ListMessagesRequest(conversation_id=conversation, page_size=50),
                metadata=alice.md,
            )
        await presence.Heartbeat(ppb.HeartbeatRequest(), metadata=alice.md)
        # The media dashboard's RPC panels select service="media".
        media = media_pb2_grpc.MediaServiceStub(media_channel)
        await media.GetQuota(mepb.GetQuotaRequest(), metadata=alice.md)
        # And the search dashboard's, service="search".
        search = search_pb2_grpc.SearchServiceStub(search_channel)
        await search.GetSearchSettings(spb.GetSearchSettingsRequest(), metadata=alice.md)


def metrics_urls(stack: LocalStack) -> list[str]:
    return [
        stack.keys_metrics_url,
        *stack.message_metrics_urls,
        stack.presence_metrics_url,
        stack.media_metrics_url,
        stack.search_metrics_url,
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def exported(stack: LocalStack) -> Exported:
    await exercise(stack)
    # Sampled gauges (backlogs, prekey lows) appear after their first count.
    sampled = {"parley_push_outbox_depth", "parley_identity_changes_pending"}
    sampled |= {"parley_prekey_low_devices", "parley_delivery_lag_seconds_count"}
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        found = await asyncio.to_thread(scrape, metrics_urls(stack))
        # The delivery lag is observed when the stream's write is done, which
        # on a loaded machine can come after the first scrape that knows it.
        lag_seen = found.total("parley_delivery_lag_seconds_count") >= 1
        if lag_seen and all(found.knows(name) for name in sampled):
            return found
        if asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.5)


# -- what is queried -----------------------------------------------------------


def dashboard_queries() -> dict[str, list[str]]:
    queries: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]
                exprs.append(query["query"] if isinstance(query, dict) else query)
        queries[path.name] = exprs
    return queries


def helm_binary() -> Path | None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_k8s_tools.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def alert_expressions() -> dict[str, str]:
    helm = helm_binary()
    if helm is not None:
        rules = {}
        # eu has every alert but the media ones, which only a region with media renders.
        examples = (("parley-eu", "eu-values.yaml"), ("parley-ap", "media-values.yaml"))
        for release, values in examples:
            rendered = subprocess.run(
                [str(helm), "template", release, str(CHART), "--namespace", release,
                 "-f", str(CHART / "ci" / values)],
                capture_output=True, text=True, check=True, timeout=120,
            ).stdout  # fmt: skip
            for doc in yaml.safe_load_all(rendered):
                if doc and doc["kind"] == "PrometheusRule":
                    for group in doc["spec"]["groups"]:
                        rules.update({r["alert"]: r["expr"] for r in group["rules"]})
        return rules
    # No helm here: the expressions as written in the template, its actions
    # replaced by harmless text.
    rules = {}
    for path in (CHART / "templates").glob("*prometheusrule*"):
        text = path.read_text()
        for alert, expr in re.findall(
            r"- alert: (\w+)\s+expr: \|-\n((?:[ \t]+.*\n)+?)\s+for:", text
        ):
            rules[alert] = re.sub(r"\{\{-?[^}]*-?\}\}", "x", expr)
    return rules


def test_dashboards_are_generated_from_their_source() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_alert_rules_are_found() -> None:
    rules = alert_expressions()
    assert "ParleyDeliveryLagHigh" in rules
    assert "ParleyMediaGcLagHigh" in rules
    assert "parley_delivery_lag_seconds_bucket" in metric_names(rules["ParleyDeliveryLagHigh"])


# -- the checks ------------------------------------------------------------------


def unknown_names(exported: Exported, sources: dict[str, list[str]]) -> list[str]:
    return [
        f"{source}: {name}"
        for source, exprs in sources.items()
        for expr in exprs
        for name in sorted(metric_names(expr))
        if not exported.knows(name)
    ]


def unmatched_selectors(exported: Exported, sources: dict[str, list[str]]) -> list[str]:
    return [
        f'{source}: {metric}{{{label}="{value}"}}'
        for source, exprs in sources.items()
        for expr in exprs
        for metric, label, value in equality_matchers(expr)
        if label not in SCRAPE_LABELS
        and metric not in SYNTHETIC
        and not exported.has_series(metric, label, value)
    ]


async def test_dashboards_query_only_exported_metrics(exported: Exported) -> None:
    queries = dashboard_queries()
    assert set(queries) == {
        "overview.json",
        "messaging.json",
        "delivery.json",
        "presence.json",
        "keys.json",
        "media.json",
        "search.json",
        "regions.json",
    }
    assert unknown_names(exported, queries) == []
    assert unmatched_selectors(exported, queries) == []


async def test_alerts_query_only_exported_metrics(exported: Exported) -> None:
    alerts = {name: [expr] for name, expr in alert_expressions().items()}
    assert alerts
    assert unknown_names(exported, alerts) == []
    assert unmatched_selectors(exported, alerts) == []


async def test_the_check_notices_a_missing_metric_and_a_wrong_label(exported: Exported) -> None:
    queries = {
        "made-up.json": [
            'sum(rate(parley_rpc_request_total{region=~"$region"}[5m]))',
            'rate(parley_prekey_bundles_total{region=~"$region",pre_key="none_left"}[5m])',
            'histogram_quantile(0.9, rate(parley_delivery_lag_seconds_bucket{region="eu"}[5m]))',
        ]
    }
    assert unknown_names(exported, queries) == ["made-up.json: parley_rpc_request_total"]
    assert unmatched_selectors(exported, queries) == [
        'made-up.json: parley_prekey_bundles_total{pre_key="none_left"}'
    ]


async def test_the_exercise_shows_in_the_domain_metrics(exported: Exported) -> None:
    assert exported.total("parley_messages_sent_total", conversation_type="direct") >= 1
    # Bob's stream wrote alice's message live: a lag, seconds at most.
    assert exported.total("parley_delivery_lag_seconds_count") >= 1
    lag = exported.total("parley_delivery_lag_seconds_sum")
    assert 0 <= lag / exported.total("parley_delivery_lag_seconds_count") < 5
    assert exported.total("parley_fanout_streams_count") >= 1
    assert exported.total("parley_recent_cache_reads_total", result="hit") >= 1
    for service in ("keys", "message", "presence", "media", "search"):
        assert exported.total("parley_mongo_up", service=service) >= 1
        assert exported.total("parley_redis_up", service=service) >= 1
    assert exported.has_series("parley_prekey_bundles_total", "pre_key", "signed_fallback")


def documented_metrics() -> set[str]:
    text = ARCHITECTURE.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(parley_[a-z0-9_]+)` \|", section, re.MULTILINE))


async def test_every_exported_metric_is_documented(exported: Exported) -> None:
    documented = documented_metrics()
    assert "parley_delivery_lag_seconds" in documented
    assert sorted(exported.documented_names() - documented) == []
    assert sorted(documented - exported.documented_names()) == []
