"""The shipped monitoring configs, checked by the real promtool and amtool."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "monitoring_support", Path(__file__).resolve().parents[1] / "monitoring_support.py"
)
assert _spec and _spec.loader
ms = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("monitoring_support", ms)
_spec.loader.exec_module(ms)

pytestmark = pytest.mark.deploy

REQUIRED_ALERTS = {
    "NovaDown", "NovaHighErrorRate", "NovaHighLatency", "NovaWebSocketErrors",
    "NovaDatabaseErrors", "NovaSlowDatabaseQueries", "NovaMemoryNearLimit", "NovaPodRestarting",
    "TurnServerDown", "NovaCertificateExpiring",
}


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


# --- prometheus.yml ------------------------------------------------------------------------

def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = ms.require_program("promtool")
    derived = ms.derive_prometheus_config(tmp_path)
    result = run(promtool, "check", "config", derived)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    # the rule files it names were found and checked too
    assert "nova.rules.yml" in result.stdout + result.stderr


def test_prometheus_config_promtool_rejects_a_broken_relabel(tmp_path: Path) -> None:
    promtool = ms.require_program("promtool")
    derived = ms.derive_prometheus_config(tmp_path)
    text = derived.read_text().replace("regex: Pending|Succeeded|Failed", "regex: Pending|(")
    derived.write_text(text)
    assert run(promtool, "check", "config", derived).returncode != 0


def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    jobs: dict[str, dict[str, Any]] = {j["job_name"]: j for j in config["scrape_configs"]}
    assert name in jobs, f"no scrape job {name}"
    return jobs[name]


def test_prometheus_config_discovers_every_required_target() -> None:
    config = ms.load_yaml(ms.PROMETHEUS_YML)
    nova = _job(config, "nova")
    sd = nova["kubernetes_sd_configs"][0]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == ["nova-messaging"]
    keep = nova["relabel_configs"][0]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    assert keep["action"] == "keep"

    coturn = _job(config, "coturn")
    assert coturn["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["nova-turn"]
    assert any(r.get("regex") == "9641" for r in coturn["relabel_configs"])

    cadvisor = _job(config, "kubernetes-cadvisor")
    assert cadvisor["kubernetes_sd_configs"][0]["role"] == "node"
    assert cadvisor["scheme"] == "https"
    sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
    assert cadvisor["tls_config"]["ca_file"] == sa + "ca.crt"
    assert cadvisor["authorization"]["credentials_file"] == sa + "token"
    assert any(
        "/proxy/metrics/cadvisor" in str(r.get("replacement", ""))
        for r in cadvisor["relabel_configs"]
    )
    kept = " ".join(str(r.get("regex")) for r in cadvisor["metric_relabel_configs"])
    for metric in ("memory_usage_bytes", "cpu_usage_seconds_total", "spec_memory_limit_bytes",
                   "memory_working_set_bytes"):
        assert metric in kept

    assert _job(config, "prometheus")["static_configs"][0]["targets"] == ["localhost:9090"]
    am = _job(config, "alertmanager")
    assert am["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["nova-monitoring"]
    _job(config, "cert-manager")
    alerting = config["alerting"]["alertmanagers"][0]
    assert alerting["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["nova-monitoring"]
    assert config["rule_files"] == ["rules/*.rules.yml"]
    # the glob picks the rules, not the promtool test file
    matched = sorted(p.name for p in ms.RULES_DIR.glob("*.rules.yml"))
    assert matched == ["nova.rules.yml"]


# --- rules ---------------------------------------------------------------------------------

def test_rules_pass_promtool_check() -> None:
    promtool = ms.require_program("promtool")
    result = run(promtool, "check", "rules", ms.RULES_YML)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass() -> None:
    promtool = ms.require_program("promtool")
    result = run(promtool, "test", "rules", ms.RULES_TEST_YML.name, cwd=ms.RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _mutated_rules_run(tmp_path: Path, mutate: Any) -> subprocess.CompletedProcess[str]:
    promtool = ms.require_program("promtool")
    data = ms.load_yaml(ms.RULES_YML)
    for group in data["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                mutate(rule)
    import yaml

    (tmp_path / "nova.rules.yml").write_text(yaml.safe_dump(data))
    (tmp_path / "nova.rules.test.yml").write_text(ms.RULES_TEST_YML.read_text())
    return run(promtool, "test", "rules", "nova.rules.test.yml", cwd=tmp_path)


def test_rules_unit_tests_catch_alerts_that_fire_too_early(tmp_path: Path) -> None:
    result = _mutated_rules_run(tmp_path, lambda rule: rule.pop("for", None))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_rules_unit_tests_catch_alerts_that_never_fire(tmp_path: Path) -> None:
    def never(rule: dict[str, Any]) -> None:
        rule["expr"] = "vector(1) == 2"

    result = _mutated_rules_run(tmp_path, never)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for name in REQUIRED_ALERTS:  # every alert's "fires" case notices
        assert f"alertname: {name}," in out, name


def test_rules_every_alert_is_complete_and_tested() -> None:
    alerts = ms.alert_rules()
    names = {a["alert"] for a in alerts}
    assert names >= REQUIRED_ALERTS
    runbook = ms.RUNBOOKS_MD.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook, re.M)}
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert alert["labels"]["severity"] in {"critical", "warning"}, name
        ann = alert["annotations"]
        assert ann["summary"] and ann["description"], name
        url = ann["runbook_url"]
        assert url.split("#")[0].endswith("docs/operations/runbooks.md"), url
        assert url.split("#")[1] == name.lower() and name.lower() in headings, name
        section = runbook.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("Meaning", "Impact", "Diagnosis", "Mitigation"):
            assert f"**{part}.**" in section, (name, part)

    tests = ms.load_yaml(ms.RULES_TEST_YML)["tests"]
    for name in names:
        cases = [c for t in tests for c in t.get("alert_rule_test", []) if c["alertname"] == name]
        assert any(not c.get("exp_alerts") for c in cases), f"{name}: no silent case"
        assert any(c.get("exp_alerts") for c in cases), f"{name}: no firing case"
        assert any(t["name"].startswith(f"{name} fires when") for t in tests), name


def test_rules_only_query_metrics_that_exist() -> None:
    """Every metric a rule or the dashboard reads is exported by Nova, recorded, or external."""
    from nova import metrics

    body, _ = metrics.render_metrics()
    exported = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    recorded = {r["record"] for r in ms.recording_rules()}
    external = {
        "up", "process_start_time_seconds", "certmanager_certificate_expiration_timestamp_seconds",
        "container_memory_usage_bytes", "container_memory_working_set_bytes",
        "container_spec_memory_limit_bytes", "container_cpu_usage_seconds_total",
    }
    exprs = [r["expr"] for r in ms.alert_rules() + ms.recording_rules()]
    exprs += [e for _, e in ms.dashboard_expressions()]
    functions = {
        "sum", "rate", "increase", "histogram_quantile", "max", "absent", "changes", "time",
        "by", "and", "on", "or", "vector",
    }
    for expr in exprs:
        for name in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[(]", expr):
            if name in functions:
                continue
            assert name in exported | recorded | external, f"{name} in {expr}"
        for name in re.findall(
            r"(?<![\w:])((?:http|websocket|database|nova)_[a-z0-9_]+)(?![\w:])", expr
        ):
            assert name in exported | recorded, f"{name} in {expr}"


# --- alertmanager.yml ----------------------------------------------------------------------

def test_alertmanager_config_passes_amtool() -> None:
    amtool = ms.require_program("amtool")
    result = run(amtool, "check-config", ms.ALERTMANAGER_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=NovaDown", "job=nova"], "critical"),
        (["severity=critical", "alertname=TurnServerDown", "job=coturn"], "critical"),
        (["severity=warning", "alertname=NovaHighLatency", "job=nova"], "slack-warnings"),
        (["alertname=SomethingElse"], "slack-warnings"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    amtool = ms.require_program("amtool")
    cfg = f"--config.file={ms.ALERTMANAGER_YML}"
    result = run(amtool, "config", "routes", "test", cfg, *labels)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver
    ok = run(amtool, "config", "routes", "test", cfg, f"--verify.receivers={receiver}", *labels)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    other = "slack-warnings" if receiver == "critical" else "critical"
    wrong = run(amtool, "config", "routes", "test", cfg, f"--verify.receivers={other}", *labels)
    assert wrong.returncode != 0


def test_alertmanager_receivers_critical_to_slack_and_email_warning_to_slack() -> None:
    config = ms.load_yaml(ms.ALERTMANAGER_YML)
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["critical"]["slack_configs"] and receivers["critical"]["email_configs"]
    assert receivers["slack-warnings"]["slack_configs"]
    assert "email_configs" not in receivers["slack-warnings"]
    route = config["route"]
    assert route["group_by"] and route["repeat_interval"]
    assert {r["receiver"]: r["repeat_interval"] for r in route["routes"]}
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['severity="critical"']
    assert inhibit["target_matchers"] == ['severity="warning"']
    assert inhibit["equal"]


def test_alertmanager_secrets_come_from_files() -> None:
    text = ms.ALERTMANAGER_YML.read_text()
    config = ms.load_yaml(ms.ALERTMANAGER_YML)
    assert config["global"]["slack_api_url_file"].startswith("/")
    assert config["global"]["smtp_auth_password_file"].startswith("/")
    assert "hooks.slack.com" not in text

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert key not in {"api_url", "slack_api_url", "smtp_auth_password",
                                   "auth_password", "auth_secret"}, key
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)


# --- Grafana dashboard ---------------------------------------------------------------------

def test_dashboard_expressions_parse_with_promtool(tmp_path: Path) -> None:
    promtool = ms.require_program("promtool")
    exprs = ms.dashboard_expressions()
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_the_required_views() -> None:
    dash = json.loads(ms.DASHBOARD_JSON.read_text())
    assert dash["uid"] and dash["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    text = " ".join(e for _, e in ms.dashboard_expressions())
    for needle in (
        "http_requests", "http_request_duration_seconds", "p99", "websocket_connections_active",
        "websocket_errors_total", "nova_messages_sent_total", "nova_messages_delivered_total",
        "database_query_duration_seconds", "database_errors_total", "nova_calls_total",
        "container_cpu_usage_seconds_total", "container_memory_usage_bytes",
    ):
        assert needle in text, needle
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
