"""The Prometheus configuration and rules pass promtool (Debian's prometheus package, which
.ci/run installs), and every query of the Grafana dashboard and of the rules names a
metric that a live tritonserver, with a router shadowing a candidate, really exports."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lifeloop.client import LifeloopClient
from lifeloop.retrain import TrainResult
from lifeloop.rollout import Rollout
from lifeloop.serve import ServerConfig, TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration.debian import require_tool

DEPLOY = Path(__file__).parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lifeloop.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
K8S_ADAPTER = DEPLOY / "k8s" / "base" / "prometheus-adapter.yaml"

_LABELS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    aggregations, keywords, label matchers, grouping labels or numbers."""
    text = _RANGE.sub(" ", _GROUPING.sub(" ", _LABELS.sub(" ", expr)))
    names = set()
    for match in _NAME.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        if text[max(0, match.start() - 1)].isdigit():  # 1e-9
            continue
        names.add(match.group())
    return names


def promtool() -> str:
    return require_tool("promtool", "prometheus")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", *args], capture_output=True, text=True)


def adapter_rules() -> list[dict]:
    """Prometheus Adapter's rules from deploy/k8s, their PromQL with the adapter's template
    filled in as it does for one pod."""
    configmap = yaml.safe_load((K8S_ADAPTER).read_text())
    rules = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    for rule in rules:
        rule["expr"] = (
            rule["metricsQuery"]
            .replace("<<.GroupBy>>", "namespace, pod")
            .replace("<<.LabelMatchers>>", 'namespace="lifeloop",pod="lifeloop-triton-0"')
        )
    return rules


def promtool_test(
    tmp_path: Path, input_series: list[dict], alert_rule_test: list[dict]
) -> subprocess.CompletedProcess:
    """promtool's rule unit test of deploy/prometheus/rules.yml on synthetic series, one
    sample a minute."""
    tests = {
        "rule_files": [str(PROMETHEUS / "rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": input_series, "alert_rule_test": alert_rule_test}
        ],
    }
    path = tmp_path / "alerts.test.yml"
    path.write_text(yaml.safe_dump(tests))
    return subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)


def test_the_prometheus_config_passes_promtool() -> None:
    result = check("config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_autoscalers_adapter_query_passes_promtool(tmp_path: Path) -> None:
    rules = adapter_rules()
    recorded = [{"record": f"adapter:{r['name']['as']}", "expr": r["expr"]} for r in rules]
    path = tmp_path / "adapter.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": recorded}]}))
    result = check("rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rules_pass_promtool() -> None:
    rules = check("rules", str(PROMETHEUS / "rules.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 16 rules found" in rules.stdout


def test_the_spool_alerts_fire_while_predictions_wait_and_when_they_are_dropped(
    tmp_path: Path,
) -> None:
    """promtool's rule unit tests on synthetic series: an outage that spools for 5 minutes
    fires LifeloopPredictionsSpooled after its 2 minutes, and stops once drained; a full
    spool that drops fires LifeloopPredictionsNotLogged at once."""
    series = [
        {
            "series": 'lifeloop_spooled_records{model="digits",instance="a"}',
            "values": "0 0 120 480 900 1300 1700 0 0 0 0 0",
        },
        {
            "series": 'lifeloop_log_records_total{model="digits",outcome="dropped"}',
            "values": "0 0 0 0 0 0 50 100 150 200 250 300",
        },
    ]
    alerts = [
        {
            "eval_time": "3m",
            "alertname": "LifeloopPredictionsSpooled",
            "exp_alerts": [],
        },
        {
            "eval_time": "5m",
            "alertname": "LifeloopPredictionsSpooled",
            "exp_alerts": [
                {
                    "exp_labels": {
                        "severity": "warning",
                        "model": "digits",
                        "instance": "a",
                    },
                    "exp_annotations": {
                        "summary": "1300 predictions of digits wait in the "
                        "router's spool on a: the store is slow or down "
                        "(inference goes on)"
                    },
                }
            ],
        },
        {
            "eval_time": "9m",
            "alertname": "LifeloopPredictionsSpooled",
            "exp_alerts": [],
        },
        {
            "eval_time": "9m",
            "alertname": "LifeloopPredictionsNotLogged",
            "exp_alerts": [
                {
                    "exp_labels": {
                        "severity": "critical",
                        "model": "digits",
                        "outcome": "dropped",
                    },
                    "exp_annotations": {
                        "summary": "digits: predictions dropped because the "
                        "router's spool is full or its disk refuses writes"
                    },
                }
            ],
        },
    ]
    done = promtool_test(tmp_path, series, alerts)
    assert done.returncode == 0, done.stdout + done.stderr
    # And the test itself can fail: the same series with the alert expected too early.
    alerts[0] = {**alerts[0], "eval_time": "5m", "exp_alerts": []}
    assert promtool_test(tmp_path, series, alerts).returncode != 0


def test_the_budget_alerts_fire_when_kept_inputs_fill_it_and_when_they_cannot_go(
    tmp_path: Path,
) -> None:
    """promtool's rule unit tests: kept inputs that reach 95% of the budget fire
    LifeloopKeepBudgetNearlyFull after 10 minutes; ones that stay over it (labelled, so not
    evictable) fire LifeloopKeepBudgetExceeded after 15."""
    where = {"model": "digits", "router": "router", "instance": "a"}
    labels = ",".join(f'{k}="{v}"' for k, v in where.items())
    series = [
        {
            "series": f"lifeloop_kept_input_budget_bytes{{{labels}}}",
            "values": "1000x40",
        },
        {
            "series": f"lifeloop_kept_input_bytes{{{labels}}}",
            "values": "500x5 950x15 1200x20",
        },
    ]
    alerts = [
        {
            "eval_time": "10m",
            "alertname": "LifeloopKeepBudgetNearlyFull",
            "exp_alerts": [],
        },
        {
            "eval_time": "17m",
            "alertname": "LifeloopKeepBudgetNearlyFull",
            "exp_alerts": [
                {
                    "exp_labels": {
                        "severity": "info",
                        **where,
                    },
                    "exp_annotations": {
                        "summary": "router on a keeps 95% of its disk budget: from "
                        "here on its oldest unlabelled inputs are evicted"
                    },
                }
            ],
        },
        {
            "eval_time": "30m",
            "alertname": "LifeloopKeepBudgetExceeded",
            "exp_alerts": [],
        },
        {
            "eval_time": "37m",
            "alertname": "LifeloopKeepBudgetExceeded",
            "exp_alerts": [
                {
                    "exp_labels": {
                        "severity": "warning",
                        **where,
                    },
                    "exp_annotations": {
                        "summary": "router on a keeps 120% of its disk budget and "
                        "cannot evict: what is left is labelled; raise "
                        "--keep-budget or purge by age"
                    },
                }
            ],
        },
    ]
    done = promtool_test(tmp_path, series, alerts)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_drift_alert_fires_only_on_drift_that_lasts(tmp_path: Path) -> None:
    """promtool's rule unit test: one test below 0.05 among calm ones (a 1-in-20 event)
    fires nothing; a p-value that stays below it for 15 minutes fires LifeloopTrafficDrifted."""
    series = [
        {
            "series": 'lifeloop_drift_p_value{model="digits",version="3",router="router"}',
            "values": "0.6 0.3 0.01 0.4 0.7 0.5 0.002x20",
        }
    ]
    alerts = [
        {"eval_time": "5m", "alertname": "LifeloopTrafficDrifted", "exp_alerts": []},
        {"eval_time": "20m", "alertname": "LifeloopTrafficDrifted", "exp_alerts": []},
        {
            "eval_time": "22m",
            "alertname": "LifeloopTrafficDrifted",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", "model": "digits", "version": "3"},
                    "exp_annotations": {
                        "summary": "digits v3: served answers have drifted from its held-out "
                        "softmax (p = 0.002); `lifeloop drift` shows which class moved, and "
                        "`lifeloop retrain --when drift` retrains"
                    },
                }
            ],
        },
    ]
    done = promtool_test(tmp_path, series, alerts)
    assert done.returncode == 0, done.stdout + done.stderr


def wait_for_metric(url: str, name: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as response:
            if any(line.startswith(name + "{") for line in response.read().decode().splitlines()):
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not export {name} within {timeout_s:g} s")


def test_a_broken_rule_file_fails_promtool(tmp_path: Path) -> None:
    broken = (
        (PROMETHEUS / "rules.yml")
        .read_text()
        .replace("rate(nv_inference_count[1m]))", "rate(nv_inference_count[1m])", 1)
    )
    path = tmp_path / "rules.yml"
    path.write_text(broken)
    result = check("rules", str(path))
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr)


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'sum by (model, version) (rate(nv_a_total{quantile="0.5"}[1m])) / '
        "clamp_min(sum without (x) (lifeloop_b), 1e-9) and on (model) lifeloop:c:rate1m"
    )
    assert metric_names(expr) == {"nv_a_total", "lifeloop_b", "lifeloop:c:rate1m"}


@pytest.fixture(scope="module")
def scraped(
    tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out, served_held_out
) -> Iterator[set[str]]:
    """Metric names of a live tritonserver whose router shadows a candidate under traffic,
    with the response cache on for the classifier and a light model cascaded before it."""
    x, _ = served_held_out
    repo = tmp_path_factory.mktemp("observed") / "model_repository"
    publish_trained(
        trained.checkpoint,
        repo,
        "digits",
        samples=held_out[0],
        response_cache=True,
        reference=held_out[0],
    )
    publish_trained(trained.checkpoint, repo, "digits")
    publish_trained(trained.checkpoint, repo, "digits_light")
    install_router(repo, "digits", champion=1, keep=KeepRule.everything())
    config = ServerConfig.on_free_ports(repo, log_file=repo.parent / "tritonserver.log", cache_mb=8)
    with TritonServer(config) as server, Store.for_repository(repo) as store:
        rollout = Rollout(repo, store, server_url=server.http_url)
        rollout.start_candidate(2, canary_weight=0.3, shadow=True, reason="observability test")
        rollout.cascade("digits_light", 0.9, reason="observability test")
        with LifeloopClient(server.grpc_url, model="router") as client:
            client.wait_until_ready(120, model="router")
            for i in range(20):
                client.classify(x[i : i + 1])
            # Enough answers of the champion's own for a drift test, whose gauge is set
            # from its own thread.
            rollout.cascade_off(reason="observability test")
            rollout.canary(0.0, reason="observability test")
            client.classify(x[:160])
            wait_for_metric(server.metrics_url, "lifeloop_drift_p_value")
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
    yield {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_dashboard_query_names_an_exported_metric(scraped: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource
            names = metric_names(target["expr"])
            assert names and names <= scraped, (panel["title"], names - scraped)
            used |= names
    # What the dashboard is for: throughput, p50/p99, queue time, requests per model and
    # version, failures by reason, the canary split, the shadow's agreement, the cache and
    # the cascade's escalations.
    assert {
        "nv_inference_count",
        "nv_inference_request_summary_us",
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "lifeloop_routed_images_total",
        "lifeloop_shadow_agreed_total",
        "lifeloop_shadow_compared_total",
        "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model",
        "lifeloop_cascade_images_total",
        "lifeloop_drift_p_value",
    } <= used
    assert metric_names("rate(nv_not_a_metric[1m])") - scraped == {"nv_not_a_metric"}


def test_every_rule_reads_exported_metrics_or_recorded_rules(scraped: set[str]) -> None:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= scraped | recorded, (rule.get("record"), names - scraped)


def test_the_autoscaler_reads_exported_metrics(scraped: set[str]) -> None:
    for rule in adapter_rules():
        names = metric_names(rule["expr"]) | metric_names(rule["seriesQuery"])
        assert names == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
        assert names <= scraped
