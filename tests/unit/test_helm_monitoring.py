"""The chart's monitoring: alert rules, ServiceMonitors and Grafana dashboards.

Rendered with the real helm (scripts/fetch_k8s_tools.py); the metric names
the rules and dashboards query are checked against what the services export.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "parley"
EU_VALUES = CHART / "ci" / "eu-values.yaml"
MEDIA_VALUES = CHART / "ci" / "media-values.yaml"
Doc = dict[str, Any]

ALERTS = {
    "ParleySendLatencyHigh",
    "ParleyDeliveryLagHigh",
    "ParleyErrorRateHigh",
    "ParleyPreKeysExhausted",
    "ParleyRateLimitedHigh",
    "ParleyRedisDown",
    "ParleyMongoDown",
    "ParleyTargetDown",
    "ParleyArchiverBehind",
}
# Rendered only for a region that runs svc_media (eu does not).
MEDIA_ALERTS = {"ParleyMediaGcLagHigh", "ParleyMediaObjectStoreDown"}
# Rendered only for a region with peers (eu has us; the media example has none).
REGION_ALERTS = {"ParleyReplicationLagHigh", "ParleyRegionUnreachable"}
# Metrics the chart may query before a service exports them (none now; the
# live check is tests/integration/test_metrics_coverage.py).
PENDING_METRICS: set[str] = set()
SERVICE_PACKAGES = (
    "parley_core",
    "svc_keys",
    "svc_message",
    "svc_presence",
    "svc_media",
    "svc_search",
)


@pytest.fixture(scope="module")
def helm() -> Path:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_k8s_tools.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"fetching helm failed:\n{result.stderr}"
    return Path(result.stdout.strip())


def render(
    helm: Path, *extra: str, values: Path = EU_VALUES, release: str = "parley-eu"
) -> list[Doc]:
    result = subprocess.run(
        [
            str(helm),
            "template",
            release,
            str(CHART),
            "--namespace",
            release,
            "-f",
            str(values),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def alert_rules(docs: list[Doc]) -> dict[str, Doc]:
    rules: dict[str, Doc] = {}
    for doc in docs:
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                rules.update({rule["alert"]: rule for rule in group["rules"]})
    return rules


def test_every_alert_is_rendered_for_the_region(helm: Path) -> None:
    rules = alert_rules(render(helm))
    assert set(rules) == ALERTS | REGION_ALERTS
    for name, rule in rules.items():
        selectors = re.findall(r"\{([^{}]*)\}", rule["expr"])
        assert selectors, name
        # Every series is this region's, however many regions the Prometheus holds.
        for selector in selectors:
            assert selector.startswith('namespace="parley-eu",region="eu"'), (name, selector)
        assert rule["annotations"]["runbook_url"].endswith("#" + name.lower())
        # Prometheus's own templating survives Helm's.
        assert "{{ $labels." in rule["annotations"]["description"]


def test_alert_values_reach_the_rules(helm: Path) -> None:
    rules = alert_rules(
        render(
            helm,
            "--set-json",
            "monitoring.prometheusRules.alerts.sendLatency.thresholdSeconds=0.25",
            "--set-json",
            'monitoring.prometheusRules.alerts.mongoDown={"enabled": true, "for": "3m",'
            ' "severity": "warning"}',
            "--set-json",
            "monitoring.prometheusRules.alerts.targetDown.enabled=false",
        )
    )
    assert rules["ParleySendLatencyHigh"]["expr"].rstrip().endswith("> 0.25")
    assert rules["ParleyMongoDown"]["for"] == "3m"
    assert rules["ParleyMongoDown"]["labels"] == {"severity": "warning"}
    assert set(rules) == (ALERTS | REGION_ALERTS) - {"ParleyTargetDown"}


def test_archiver_alert_watches_the_lag_behind_the_hot_window(helm: Path) -> None:
    rule = alert_rules(render(helm))["ParleyArchiverBehind"]
    assert "parley_archiver_lag_seconds" in rule["expr"]
    assert rule["expr"].rstrip().endswith("> 86400")
    assert (rule["for"], rule["labels"]) == ("1h", {"severity": "warning"})


def test_no_rule_file_when_every_alert_is_off(helm: Path) -> None:
    off = {name: {"enabled": False} for name in ("sendLatency", "deliveryLag", "errorRate")}
    off |= {name: {"enabled": False} for name in ("preKeyExhaustion", "rateLimited", "redisDown")}
    off |= {name: {"enabled": False} for name in ("mongoDown", "targetDown", "archiverBehind")}
    off |= {name: {"enabled": False} for name in ("replicationLag", "regionUnreachable")}
    args: list[str] = []
    for name, value in off.items():
        args += ["--set-json", f"monitoring.prometheusRules.alerts.{name}={json.dumps(value)}"]
    docs = render(helm, *args)
    assert [d for d in docs if d["kind"] == "PrometheusRule"] == []
    assert [d for d in docs if d["kind"] == "ServiceMonitor"] != []


def test_region_alerts_watch_each_peer_with_the_values_thresholds(helm: Path) -> None:
    rules = alert_rules(render(helm))
    lag = rules["ParleyReplicationLagHigh"]
    assert "parley_replication_lag_seconds" in lag["expr"]
    assert "peer)" in lag["expr"]  # one alert per peer region
    assert lag["expr"].rstrip().endswith("> 60")
    assert (lag["for"], lag["labels"]) == ("10m", {"severity": "warning"})
    assert "{{ $labels.peer }}" in lag["annotations"]["description"]
    unreachable = rules["ParleyRegionUnreachable"]
    assert "rate(parley_region_refusals_total" in unreachable["expr"]
    assert "peer)" in unreachable["expr"]
    assert unreachable["expr"].rstrip().endswith("> 0.05")
    assert (unreachable["for"], unreachable["labels"]) == ("5m", {"severity": "critical"})
    tuned = alert_rules(
        render(
            helm,
            "--set-json",
            'monitoring.prometheusRules.alerts.replicationLag={"enabled": true,'
            ' "thresholdSeconds": 300, "for": "30m", "severity": "critical"}',
            "--set-json",
            "monitoring.prometheusRules.alerts.regionUnreachable.threshold=1",
        )
    )
    lag = tuned["ParleyReplicationLagHigh"]
    assert lag["expr"].rstrip().endswith("> 300")
    assert (lag["for"], lag["labels"]) == ("30m", {"severity": "critical"})
    assert tuned["ParleyRegionUnreachable"]["expr"].rstrip().endswith("> 1")
    off = render(
        helm, "--set-json", "monitoring.prometheusRules.alerts.replicationLag.enabled=false"
    )
    assert set(alert_rules(off)) == (ALERTS | REGION_ALERTS) - {"ParleyReplicationLagHigh"}


def test_region_alerts_need_peers(helm: Path) -> None:
    rules = alert_rules(render(helm, "--set-json", "region.spec.peers=[]"))
    assert set(rules) == ALERTS
    # With only the region alerts on, a region without peers has no rule file.
    names = ["sendLatency", "deliveryLag", "errorRate", "preKeyExhaustion", "rateLimited"]
    names += ["redisDown", "mongoDown", "targetDown", "archiverBehind"]
    args = ["--set-json", "region.spec.peers=[]"]
    for name in names:
        args += ["--set-json", f"monitoring.prometheusRules.alerts.{name}.enabled=false"]
    assert [d for d in render(helm, *args) if d["kind"] == "PrometheusRule"] == []
    (rule_file,) = [d for d in render(helm, *args[2:]) if d["kind"] == "PrometheusRule"]
    assert set(alert_rules([rule_file])) == REGION_ALERTS


def test_alert_values_are_checked_by_the_schema(helm: Path) -> None:
    for bad in (
        "monitoring.prometheusRules.alerts.replicationLag.thresholdSeconds=0",
        'monitoring.prometheusRules.alerts.regionUnreachable.for="five minutes"',
        'monitoring.prometheusRules.alerts.regionUnreachable.severity="page"',
    ):
        command = [str(helm), "template", "parley-eu", str(CHART), "-f", str(EU_VALUES)]
        result = subprocess.run(
            [*command, "--set-json", bad],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, bad


def test_the_regions_dashboard_shows_every_region_metric() -> None:
    dashboard = json.loads((CHART / "dashboards" / "regions.json").read_text())
    queried = queried_metrics(dashboard_expressions(dashboard))
    assert queried >= {
        "parley_replication_lag_seconds",
        "parley_replication_backlog",
        "parley_replication_sent_changes_total",
        "parley_replication_received_changes_total",
        "parley_replication_snapshots_total",
        "parley_region_forwards_total",
        "parley_region_refusals_total",
        "parley_revocations_pushed_total",
        "parley_revocation_push_backlog",
    }
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # Per peer (or source) region: "region" is the scraped one.
            assert "peer" in target["expr"] or "source" in target["expr"], panel["title"]


def exported_metrics() -> set[str]:
    """Sample names the services expose: each registered family with the
    suffixes Prometheus clients add to counters and histograms."""
    names: set[str] = set()
    for package in SERVICE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r'"(parley_[a-z0-9_]+)"', path.read_text()))
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return {name + suffix for name in names for suffix in suffixes} | {"up"}


def queried_metrics(expressions: list[str]) -> set[str]:
    return {m for e in expressions for m in re.findall(r"\b([a-z_][a-z0-9_]*)\{", e)}


def dashboard_files() -> list[Path]:
    return sorted((CHART / "dashboards").glob("*.json"))


def dashboard_expressions(dashboard: Doc) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def render_media(helm: Path, *extra: str) -> list[Doc]:
    return render(helm, *extra, values=MEDIA_VALUES, release="parley-ap")


def test_media_alerts_come_with_media(helm: Path) -> None:
    rules = alert_rules(render_media(helm))
    assert set(rules) == ALERTS | MEDIA_ALERTS
    for name in MEDIA_ALERTS:
        rule = rules[name]
        for selector in re.findall(r"\{([^{}]*)\}", rule["expr"]):
            assert selector.startswith('namespace="parley-ap",region="ap"'), (name, selector)
        assert rule["annotations"]["runbook_url"].endswith("#" + name.lower())
        assert "{{ $labels.region }}" in rule["annotations"]["description"]
    gc = rules["ParleyMediaGcLagHigh"]
    assert "parley_media_gc_lag_seconds" in gc["expr"]
    assert gc["expr"].rstrip().endswith("> 7200")  # media-values.yaml's threshold
    assert (gc["for"], gc["labels"]) == ("15m", {"severity": "warning"})
    store = rules["ParleyMediaObjectStoreDown"]
    assert "parley_media_store_available" in store["expr"]
    assert store["expr"].rstrip().endswith("== 0")
    assert store["labels"] == {"severity": "critical"}
    assert 'job=~"keys|message|presence|media|search"' in rules["ParleyTargetDown"]["expr"]
    off = alert_rules(
        render_media(
            helm, "--set-json", "monitoring.prometheusRules.alerts.mediaGcLag.enabled=false"
        )
    )
    assert set(off) == ALERTS | MEDIA_ALERTS - {"ParleyMediaGcLagHigh"}


def test_only_media_alerts_on_make_no_rule_file_without_media(helm: Path) -> None:
    names = ["sendLatency", "deliveryLag", "errorRate", "preKeyExhaustion", "rateLimited"]
    names += ["redisDown", "mongoDown", "targetDown", "archiverBehind"]
    names += ["replicationLag", "regionUnreachable"]
    args: list[str] = []
    for name in names:
        args += ["--set-json", f"monitoring.prometheusRules.alerts.{name}.enabled=false"]
    assert [d for d in render(helm, *args) if d["kind"] == "PrometheusRule"] == []
    (rule_file,) = [d for d in render_media(helm, *args) if d["kind"] == "PrometheusRule"]
    assert set(alert_rules([rule_file])) == MEDIA_ALERTS


def test_rules_and_dashboards_query_only_known_metrics(helm: Path) -> None:
    expressions = [rule["expr"] for rule in alert_rules(render(helm)).values()]
    expressions += [rule["expr"] for rule in alert_rules(render_media(helm)).values()]
    for path in dashboard_files():
        expressions += dashboard_expressions(json.loads(path.read_text()))
    queried = queried_metrics(expressions)
    assert "parley_rpc_duration_seconds_bucket" in queried
    unknown = queried - exported_metrics()
    assert unknown <= PENDING_METRICS, f"no service exports {sorted(unknown - PENDING_METRICS)}"
    # Each name waiting for its service is one the chart really queries.
    assert queried >= PENDING_METRICS


def test_metric_check_notices_a_misspelt_name() -> None:
    queried = queried_metrics(['rate(parley_rpc_request_total{region="eu"}[5m])'])
    assert queried - exported_metrics() == {"parley_rpc_request_total"}


def test_service_monitors_select_each_service_of_the_region(helm: Path) -> None:
    monitors = [d for d in render(helm) if d["kind"] == "ServiceMonitor"]
    by_component = {
        m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: m for m in monitors
    }
    assert set(by_component) == {"keys", "message", "presence"}
    media = [d for d in render_media(helm) if d["kind"] == "ServiceMonitor"]
    assert {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in media} == {
        "keys",
        "message",
        "presence",
        "media",
        "search",
    }
    for component, monitor in by_component.items():
        spec = monitor["spec"]
        assert spec["selector"]["matchLabels"] == {
            "app.kubernetes.io/part-of": "parley",
            "app.kubernetes.io/component": component,
            "parley.dev/region": "eu",
        }
        assert spec["namespaceSelector"] == {"matchNames": ["parley-eu"]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] == "metrics"
        # The services' own service="..." label must win over the target's.
        assert endpoint["honorLabels"] is True
        assert {"action": "replace", "targetLabel": "region", "replacement": "eu"} in (
            endpoint["relabelings"]
        )
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_are_parameterised_by_datasource_and_region() -> None:
    files = dashboard_files()
    assert files, "helm/parley/dashboards/ holds no dashboard"
    uids = []
    for path in files:
        dashboard = json.loads(path.read_text())
        uids.append(dashboard["uid"])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert "region" in variables, path.name
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])
                assert 'region=~"$region"' in target["expr"], (path.name, panel["title"])
    assert len(uids) == len(set(uids))


def test_each_dashboard_ships_verbatim_in_a_sidecar_config_map(helm: Path) -> None:
    maps = {
        d["metadata"]["name"]: d
        for d in render(helm, "--set-json", 'monitoring.dashboards.folder="Chat"')
        if d["kind"] == "ConfigMap"
    }
    assert len(maps) == len(dashboard_files())
    for path in dashboard_files():
        config_map = maps[f"parley-eu-dashboard-{path.stem}"]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Chat"}
        assert config_map["data"] == {path.name: path.read_text().rstrip("\n")}
