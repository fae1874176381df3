"""Write the Grafana dashboards of helm/parley/dashboards/ from their source,
scripts/dashboard_panels.py.

    uv run python scripts/gen_dashboards.py          # rewrite the JSON files
    uv run python scripts/gen_dashboards.py --check  # fail if they are stale

Every dashboard has a ``datasource`` variable (any Prometheus) and a
multi-valued ``region`` variable; every query selects ``region=~"$region"``.
The services do not label their own series with a region: Prometheus adds it
when scraping (the chart's ServiceMonitors relabel ``region``; locally a
``labels: {region: local}`` in the scrape config does the same).
tests/integration/test_metrics_coverage.py checks that every metric queried
here is exported by a running stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dashboard_panels import DASHBOARDS, Dashboard, Panel

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "helm" / "parley" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "fillOpacity": 10,
        }
    options: dict[str, Any]
    if panel.kind == "timeseries":
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "datasource": DATASOURCE,
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    panels = []
    x = y = 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(render_panel(panel, panel_id, x, y))
        x += panel.width
    return {
        "uid": f"parley-{dashboard.name}",
        "title": f"Parley / {dashboard.title}",
        "description": dashboard.description,
        "tags": ["parley"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [
            {
                "title": "Parley",
                "type": "dashboards",
                "tags": ["parley"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "includeAll": False,
                    "multi": False,
                },
                {
                    "name": "region",
                    "label": "Region",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(parley_rpc_requests_total, region)",
                        "refId": "region",
                    },
                    "definition": "label_values(parley_rpc_requests_total, region)",
                    "current": {},
                    "hide": 0,
                    "refresh": 2,
                    "regex": "",
                    "sort": 1,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                },
            ]
        },
        "panels": panels,
    }


def rendered() -> dict[Path, str]:
    return {
        OUT / f"{d.name}.json": json.dumps(render(d), indent=2, ensure_ascii=False) + "\n"
        for d in DASHBOARDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    stale = [
        path for path, text in rendered().items() if not path.exists() or path.read_text() != text
    ]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
