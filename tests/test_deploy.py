"""Deployment files: the alerts and the dashboard use metrics the gateway really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from gateway.config import load_config
from gateway.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\bgateway_[a-z_]+\b")


def exported() -> set[str]:
    """Every series name a scrape of the gateway can contain."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def referenced(text: str) -> set[str]:
    return set(NAME.findall(text))


def test_alert_rules_use_real_metric_names() -> None:
    text = (ROOT / "config" / "prometheus" / "alerts.yml").read_text()
    rules = yaml.safe_load(text)["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {
        "GatewayHigh5xxRatio",
        "GatewayUpstreamFailing",
        "GatewayUpstreamTargetsEjected",
        "GatewayRateLimitStoreDegraded",
        "GatewayConfigReloadFailed",
    }
    names = referenced(text)
    assert names
    assert names <= exported(), names - exported()


def test_dashboard_uses_real_metric_names() -> None:
    dashboard = json.loads((ROOT / "config" / "grafana" / "gateway-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    names = referenced(exprs)
    assert len(names) >= 8
    assert names <= exported(), names - exported()


def test_compose_runs_two_gateways_on_one_redis_with_a_valid_config() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "gateway-1", "gateway-2", "prometheus"} <= set(services)
    mounted = services["gateway-1"]["volumes"][0].split(":")[0]
    config = load_config(ROOT / mounted, env={"GATEWAY_ADMIN_TOKEN": "t" * 32}).config
    assert config.store.backend == "redis"
    assert config.admin.host == "0.0.0.0"
    scrape = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [
        "gateway-1:9090",
        "gateway-2:9090",
    ]
