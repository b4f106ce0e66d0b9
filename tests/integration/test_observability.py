"""The alert rules, the ServiceMonitor and the Grafana dashboard, with a real Prometheus engine.

- promtool (Debian's prometheus 2.42, `make system-deps`): `promtool check rules` on
  charts/depgate/files/prometheus-rules.yaml and `promtool test rules` on tests/prometheus/rules_test.yaml (each
  alert fed series: when it fires, when it does not, its labels and annotations).
- The chart: the PrometheusRule is that rules file (one source), the ServiceMonitor selects the metrics Service
  by its labels and port, with the job name the rules and the dashboard select ("depgate"), the dashboard's
  ConfigMap carries dashboards/depgate.json; all three off by default.
- Live: the session's operator (a real `depgate run`) gates a Deployment on a missing ConfigMap, and a real
  Prometheus scrapes its /metrics on loopback every second and evaluates the rules file. Every alert expression
  and every dashboard query (Grafana's variables substituted) goes through Prometheus' HTTP API and must parse
  and return data where data is expected; the blocking alert goes pending for that policy, and the
  operator-down alert for a second target of the job that refuses connections (a stopped operator).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port, wait_for
from tests.integration.kubehelp import apply, deployment, entry, policy, wait_policy

CHART = REPO / "charts" / "depgate"
RULES = CHART / "files" / "prometheus-rules.yaml"
RULES_TEST = REPO / "tests" / "prometheus" / "rules_test.yaml"
DASHBOARD = CHART / "dashboards" / "depgate.json"
JOB = "depgate"
WEBHOOK_ONLY = "depgate_workload_admission_seconds"  # observed only by the admission webhook
ALERTS = {"DepgatePreconditionBlocking", "DepgateReconcileErrors", "DepgateOperatorDown", "DepgateWebhookNotReady",
          "DepgateWatchStale", "DepgatePodsHeldAtGate"}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `make system-deps` installs Debian's prometheus (promtool with it)",
                    pytrace=False)
    return found


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets(dash: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (depgate_*, up, process_*)."""
    return set(re.findall(r"\b(depgate_[a-z_]+|up|process_[a-z_]+)\s*\{", expr))


# ---------------------------------------------------------------------------------------------------
# promtool


def test_promtool_checks_the_rules_file():
    out = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout
    assert {r["alert"] for r in _rules()} == ALERTS
    for rule in _rules():  # each names the job the ServiceMonitor's jobLabel gives (and a plain job_name)
        assert f'job="{JOB}"' in rule["expr"], rule["alert"]


def test_promtool_unit_tests_of_the_alerts_pass():
    out = subprocess.run([_tool("promtool"), "test", "rules", str(RULES_TEST)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    tested = {case["alertname"] for t in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert tested == ALERTS, "every alert has a case where it fires"


def test_promtool_unit_tests_catch_a_wrong_threshold(tmp_path):
    """The unit tests would fail a rule that fires too early (they are not vacuous)."""
    rules = yaml.safe_load(RULES.read_text())
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "DepgatePreconditionBlocking":
            rule["for"] = "10m"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    cases = yaml.safe_load(RULES_TEST.read_text())
    cases["rule_files"] = [str(tmp_path / "rules.yaml")]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(cases))
    out = subprocess.run([_tool("promtool"), "test", "rules", str(tmp_path / "test.yaml")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode != 0 and "DepgatePreconditionBlocking, time: 14m" in out.stdout + out.stderr, out.stdout


# ---------------------------------------------------------------------------------------------------
# the chart's ServiceMonitor, PrometheusRule and dashboard ConfigMap


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    from depgate.dev import build
    from tests.integration.test_helm import Helm

    try:
        binary = build.build_helm()
    except build.BuildError as e:
        pytest.fail(f"could not compile helm: {e}", pytrace=False)
    return Helm(str(binary), tmp_path_factory.mktemp("helm-home"))


MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule")


def test_the_chart_renders_no_monitoring_objects_by_default(helm):
    objs = helm.template()
    assert not [o for o in objs if o["kind"] in MONITORING_KINDS]
    assert not [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]


def test_the_charts_monitoring_objects_are_the_rules_file_and_the_dashboard_and_scrape_the_metrics_service(helm):
    objs = helm.template("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
                         "--set", "metrics.dashboard.enabled=true", "--set", "metrics.port=9090",
                         "--set", "metrics.serviceMonitor.labels.release=kps",
                         "--set", "metrics.serviceMonitor.interval=15s")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    (rule,) = by_kind["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), "the PrometheusRule is not files/prometheus-rules.yaml"

    (monitor,) = by_kind["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selected = [s for s in by_kind["Service"]
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
                and s["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["interval"] == "15s" and endpoint["path"] == "/metrics"
    scraped = [(s["metadata"]["name"], p) for s in selected for p in s["spec"]["ports"]
               if p["name"] == endpoint["port"]]
    assert [(name, p["port"], p["targetPort"]) for name, p in scraped] == [("depgate-metrics", 9090, "metrics")]
    (operator,) = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == "depgate"]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert "--metrics-port=9090" in container["args"]
    # the Prometheus Operator names the job after this label of the Service: the rules' and the dashboard's job
    (service,) = [s for s in selected if s["metadata"]["name"] == "depgate-metrics"]
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB

    (dash,) = [c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == "depgate-dashboard"]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["depgate.json"]) == _dashboard()


def test_the_schema_refuses_a_wrong_monitoring_value(helm):
    out = helm.run("template", "depgate", str(CHART), "--set", "metrics.serviceMonitor.interval=often", check=False)
    assert out.returncode != 0 and "interval" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------------
# the dashboard's shape (Grafana itself is not run: its queries are, below)

GRAFANA_VARIABLES = {"__rate_interval", "__range", "__interval"}


def test_the_dashboard_is_a_grafana_dashboard_whose_panels_do_not_overlap():
    dash = _dashboard()
    assert dash["uid"] and dash["title"] == "depgate" and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
            assert used <= set(variables) | GRAFANA_VARIABLES, (p["title"], used)
            assert _metric_names(t["expr"]), (p["title"], t["expr"])
    titles = " | ".join(p["title"] for p in dash["panels"])
    for wanted in ("Blocked preconditions by policy", "Time blocked", "Reconciles by result", "Reconcile latency",
                   "Errors", "Watch restarts", "Policy admission latency", "Workload admission latency",
                   "Pods at the scheduling gate"):
        assert wanted in titles


# ---------------------------------------------------------------------------------------------------
# live: a real Prometheus scraping the session's operator


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # a query that does not parse: 400 with the error in the body
            return json.loads(e.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        got = self.get("/api/v1/query", query=expr)
        assert got["status"] == "success", f"Prometheus refused {expr!r}: {got.get('errorType')}: {got.get('error')}"
        return list(got["data"]["result"])


@pytest.fixture
def prometheus(operator, tmp_path) -> Iterator[Prometheus]:
    binary = _tool("prometheus")
    port, stopped = free_port(), free_port()  # nothing listens on `stopped`: an operator that is down
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [
            {"targets": [f"127.0.0.1:{operator.metrics_port}"]},
            {"targets": [f"127.0.0.1:{stopped}"], "labels": {"test": "stopped"}}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = Prometheus(port)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited {proc.returncode}:\n{(tmp_path / 'prometheus.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_for(ready, 30, interval=0.1, what="prometheus /-/ready")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _substituted(expr: str, namespace: str) -> str:
    """What Grafana sends for this dashboard: its variables as Grafana fills them in."""
    return (expr.replace("$namespace", namespace).replace("$__rate_interval", "10s").replace("$__range", "5m")
            .replace("$__interval", "1s"))


def test_every_alert_and_every_dashboard_query_evaluates_against_a_running_depgate(plane, operator, namespace,
                                                                                    prometheus):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("app", "app", "- name: settings\n  configMap: {name: app-config, keys: [a]}"))
    wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("state") == "Blocking")
    ours = {"namespace": namespace, "policy": "app"}

    def scraped() -> list[dict[str, Any]]:
        return prometheus.query(f'depgate_preconditions{{job="{JOB}", namespace="{namespace}", state="Blocking"}}')

    (series,) = wait_for(scraped, 30, interval=0.2, what="Prometheus scraping the operator's blocking gauge")
    assert series["metric"]["instance"] == f"127.0.0.1:{operator.metrics_port}" and series["value"][1] == "1"

    def up() -> dict[str, str]:
        return {r["metric"].get("test", "operator"): r["value"][1] for r in prometheus.query(f'up{{job="{JOB}"}}')}

    wait_for(lambda: len(up()) == 2, 10, interval=0.2, what="both targets scraped once")
    assert up() == {"operator": "1", "stopped": "0"}

    # every metric the rules and the dashboard select exists on the running operator (a workload's admission
    # review only where the operator serves its webhook: not with DEPGATE_TEST_OPERATOR_ARGS=--authority=off)
    serving = operator.counter("depgate_webhook_ready") == 1
    exprs = [r["expr"] for r in _rules()] + [_substituted(t["expr"], namespace) for _, t in _targets(_dashboard())]
    for name in sorted(set().union(*(_metric_names(e) for e in exprs))):
        if not serving and name.startswith(WEBHOOK_ONLY):
            continue
        assert prometheus.query(f'count({{__name__="{name}", job="{JOB}"}})'), f"the operator exports no {name}"

    # the alert expressions parse and say what holds now
    results = {r["alert"]: prometheus.query(r["expr"]) for r in _rules()}
    assert ours in [{k: v for k, v in r["metric"].items() if k in ours} for r in results["DepgatePreconditionBlocking"]]
    assert [r["metric"].get("test") for r in results["DepgateOperatorDown"]] == ["stopped"]
    assert bool([r for r in results["DepgateWebhookNotReady"] if r["metric"]["instance"].endswith(
        f":{operator.metrics_port}")]) is not serving, "the alert says whether the session operator serves its webhook"
    assert results["DepgateWatchStale"] == []
    assert [r["metric"]["instance"] for r in results["DepgatePodsHeldAtGate"]] in ([], [series["metric"]["instance"]])

    # Prometheus' own rule evaluation: every rule healthy, the blocking and operator-down alerts pending
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return rules if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules) else None

    rules = wait_for(evaluated, 30, interval=0.2, what="Prometheus evaluating the rules file")
    assert {r["name"]: (r["health"], r.get("lastError", "")) for r in rules} == {a: ("ok", "") for a in ALERTS}

    def pending() -> set[str]:
        alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "pending"
                and (a["labels"].get("namespace") == namespace or a["labels"].get("test") == "stopped")}

    wait_for(lambda: pending() == {"DepgatePreconditionBlocking", "DepgateOperatorDown"}, 30, interval=0.2,
             what="the blocking and operator-down alerts pending")

    # every dashboard query parses and returns data (rate() needs two scrapes: polled, not slept)
    dash = _dashboard()
    for title, target in _targets(dash):
        expr = _substituted(target["expr"], namespace)
        if not serving and WEBHOOK_ONLY in expr:
            prometheus.query(expr)  # it parses; there is no data without the webhook
            continue
        got = wait_for(lambda e=expr: prometheus.query(e), 30, interval=0.25, what=f"data for {title!r}: {expr}")
        if title == "Blocked preconditions by policy":
            assert [(r["metric"], r["value"][1]) for r in got] == [(ours, "1")]
        if title == "Policies blocking":
            assert float(got[0]["value"][1]) >= 1
    (variable,) = [v for v in dash["templating"]["list"] if v["name"] == "namespace"]
    selector = re.fullmatch(r"label_values\((.+), namespace\)", variable["query"]["query"])
    assert selector, variable["query"]
    values = prometheus.get("/api/v1/label/namespace/values", **{"match[]": selector.group(1)})
    assert values["status"] == "success" and namespace in values["data"]
