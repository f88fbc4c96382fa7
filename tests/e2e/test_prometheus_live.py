"""Live: `nova serve` + a real Prometheus and Alertmanager on the shipped configs.

Prometheus runs the shipped prometheus.yml with each kubernetes_sd_configs swapped for a
file_sd file carrying the labels Kubernetes pod discovery would give (Debian's build has no
Kubernetes SD), so the shipped relabel rules pick the Nova pod by its annotations, rewrite the
address to the annotated port and drop the pods they must drop. Then: `up` is 1, every required
metric has series, every rule group evaluates without error, every dashboard expression
evaluates, route labels are templates, and the service's logs carry no secret or body.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import importlib.util
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from nova.client import ApiError, NovaClient

_spec = importlib.util.spec_from_file_location(
    "monitoring_support", Path(__file__).resolve().parents[1] / "monitoring_support.py"
)
assert _spec and _spec.loader
ms = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("monitoring_support", ms)
_spec.loader.exec_module(ms)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

REQUIRED_SERIES = (
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "websocket_connections_active",
    "websocket_errors_total",
    "database_query_duration_seconds_bucket",
    "database_errors_total",
    "nova_messages_sent_total",
    "nova_messages_delivered_total",
    "nova_events_appended_total",
    "nova_events_fanned_out_total",
    "nova_dispatch_catchups_total",
    "nova_dispatch_lag_seconds_bucket",
    "nova_calls_total",
    "nova_turn_credentials_issued_total",
    "nova_rate_limited_total",
    "process_start_time_seconds",
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, args: list[str], log: Path, ready_url: str) -> None:
        self.log = log
        self.ready_url = ready_url
        self._out = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.ready_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.log.name} not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


@pytest.fixture
def daemons() -> Iterator[Callable[[list[str], Path, str], Daemon]]:
    started: list[Daemon] = []

    def start(args: list[str], log: Path, ready_url: str) -> Daemon:
        d = Daemon(args, log, ready_url)
        started.append(d)
        d.wait_ready()
        return d

    yield start
    for d in reversed(started):
        d.stop()


def _query(prom: str, expr: str) -> dict[str, Any]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = r.json()
    return body




async def _drive_traffic(url: str, password: str, body: str) -> dict[str, str]:
    suffix = secrets.token_hex(4)
    async with NovaClient(url) as alice, NovaClient(url) as bob:
        await alice.register(f"alice_{suffix}", password)
        await bob.register(f"bob_{suffix}", password)
        conv = await alice.create_group("monitoring", [bob.user_id])
        async with bob.socket() as ws:
            await alice.send_message(conv["id"], body)
            for _ in range(10):  # conversation.created may come first
                event = await ws.next_event()
                if event["event"]["type"] == "message.created":
                    break
            assert event["event"]["type"] == "message.created"
            await ws.send_raw("this is not json")  # counted in websocket_errors_total
            frame = await ws.next_frame()
            assert frame["type"] == "error"
            for i in range(3):
                await bob.send_message(conv["id"], f"{body} reply {i}")
            await alice.history(conv["id"])
        with pytest.raises(ApiError) as missing:
            await alice.request("GET", "/api/v1/conversations/c_doesnotexist_42")
        assert missing.value.status == 404
        # a token in a query string must not reach the logs
        r = await alice.http.get(
            "/api/v1/users/me", params={"access_token": alice.access_token or ""},
            headers={"Authorization": f"Bearer {alice.access_token}",
                     "X-Request-ID": "e2e-monitoring-1"},
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-monitoring-1"
        return {
            "conversation_id": conv["id"],
            "access_token": alice.access_token or "",
            "refresh_token": alice.refresh_token or "",
        }


class _SlackSink:
    """A local stand-in for Slack's incoming webhook: records every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                sink.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def slack_sink() -> Iterator[_SlackSink]:
    sink = _SlackSink()
    yield sink
    sink.close()


def _alertmanager_config(tmp_path: Path, slack_port: int) -> Path:
    """The shipped alertmanager.yml with its secret files and SMTP host pointed at tmp_path."""
    config = ms.load_yaml(ms.ALERTMANAGER_YML)
    (tmp_path / "slack-webhook-url").write_text(f"http://127.0.0.1:{slack_port}/slack\n")
    (tmp_path / "smtp-password").write_text("not-a-real-password\n")
    config["global"]["slack_api_url_file"] = str(tmp_path / "slack-webhook-url")
    config["global"]["smtp_auth_password_file"] = str(tmp_path / "smtp-password")
    # nothing listens there: the e-mail attempt fails fast and stays on loopback
    config["global"]["smtp_smarthost"] = f"127.0.0.1:{_free_port()}"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_prometheus_scrapes_nova_rules_and_dashboard_evaluate(
    tmp_path: Path,
    nova_process: Callable[..., Any],
    daemons: Callable[[list[str], Path, str], Daemon],
    slack_sink: _SlackSink,
) -> None:
    prometheus = ms.require_program("prometheus")
    alertmanager = ms.require_program("prometheus-alertmanager")

    nova = nova_process(env={"NOVA_RATE_LIMITS": "off", "NOVA_LOG_LEVEL": "info",
                             "NOVA_LOG_FORMAT": "json"})
    password = "pw-" + secrets.token_hex(12)
    body = "private-body-" + secrets.token_hex(8)
    secrets_seen = asyncio.run(_drive_traffic(nova.url, password, body))

    # --- Alertmanager on the shipped config ---
    am_port = _free_port()
    am_dir = tmp_path / "am"
    am_dir.mkdir()
    am = daemons(
        [alertmanager, f"--config.file={_alertmanager_config(am_dir, slack_sink.port)}",
         f"--storage.path={am_dir / 'data'}", f"--web.listen-address=127.0.0.1:{am_port}",
         "--cluster.listen-address="],
        tmp_path / "alertmanager.log", f"http://127.0.0.1:{am_port}/-/ready",
    )

    # --- Prometheus on the shipped config, discovery emulated with file_sd ---
    prom_port = _free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    nova_port = nova.url.rsplit(":", 1)[1]
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": nova_port,
              "prometheus.io/path": "/metrics"}
    nova_targets = [
        # the container port is 3000 in the pod spec; the annotation must win
        ms.k8s_pod_target("127.0.0.1:3000", namespace="nova-messaging", pod="nova-abc12",
                          container="nova", container_port=3000, annotations=scrape),
        # no scrape annotation: dropped
        ms.k8s_pod_target(f"127.0.0.1:{nova_port}", namespace="nova-messaging",
                          pod="nova-migrate-x1", container="migrate"),
        # a pod that is not running yet: dropped
        ms.k8s_pod_target("127.0.0.1:3000", namespace="nova-messaging", pod="nova-pending",
                          container="nova", annotations=scrape, phase="Pending"),
    ]
    am_target = ms.k8s_pod_target(
        f"127.0.0.1:{am_port}", namespace="nova-monitoring", pod="alertmanager-0",
        container="alertmanager", container_port=9093,
        labels={"app.kubernetes.io/name": "alertmanager"})
    config = ms.derive_prometheus_config(
        tmp_path / "prom",
        targets={"nova": nova_targets, "alertmanager": [am_target]},
        alertmanager_targets=[am_target],
        static_jobs={"prometheus": [f"127.0.0.1:{prom_port}"]},
        scrape_interval="1s",
    )
    promtool = ms.require_program("promtool")
    check = subprocess.run([promtool, "check", "config", str(config)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    daemons(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        tmp_path / "prometheus.log", f"{prom}/-/ready",
    )

    # up == 1 for nova (service discovery batches updates: the first scrape takes ~5 s)
    def nova_up() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _query(prom, 'up{job="nova"}')["data"]["result"]
        return [s for s in result if s["value"][1] == "1"]

    up = ms.poll("up{job=nova} == 1", nova_up)
    assert len(up) == 1
    labels = up[0]["metric"]
    assert labels["instance"] == f"127.0.0.1:{nova_port}"
    assert labels["namespace"] == "nova-messaging" and labels["pod"] == "nova-abc12"
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]
    active = [t for t in targets["activeTargets"] if t["labels"]["job"] == "nova"]
    assert [t["labels"]["pod"] for t in active] == ["nova-abc12"]
    assert not [t for t in targets["activeTargets"] if t["health"] == "down"
                and t["labels"]["job"] in ("nova", "prometheus", "alertmanager")]

    ms.poll("up == 1 for prometheus and alertmanager", lambda: {
        s["metric"]["job"] for s in _query(prom, "up == 1")["data"]["result"]
    } >= {"nova", "prometheus", "alertmanager"})
    ms.poll("an active Alertmanager", lambda: httpx.get(
        f"{prom}/api/v1/alertmanagers", timeout=10).json()["data"]["activeAlertmanagers"])

    # every required metric name has series
    def missing_series() -> list[str]:
        names = "|".join(REQUIRED_SERIES)
        result = _query(prom, f'count by (__name__) ({{__name__=~"{names}", job="nova"}})')
        have = {s["metric"]["__name__"] for s in result["data"]["result"]}
        return [n for n in REQUIRED_SERIES if n not in have]

    with contextlib.suppress(AssertionError):
        ms.poll("every required metric", lambda: not missing_series() or None)
    assert missing_series() == []
    sent = _query(prom, 'sum(nova_messages_sent_total{job="nova"})')["data"]["result"]
    assert float(sent[0]["value"][1]) >= 4

    # route labels are templates: no conversation id, no unmatched raw path
    def routes_seen() -> set[str] | None:
        got = {s["metric"]["route"] for s in _query(
            prom, 'count by (route) (http_requests_total{job="nova"})')["data"]["result"]}
        return got if "/metrics" in got else None  # a scrape is counted after it answered

    routes = ms.poll("the /metrics route", routes_seen)
    assert "/api/v1/conversations/{conversation_id}/messages" in routes
    assert "/api/v1/conversations/{conversation_id}" in routes  # the 404 for c_doesnotexist
    assert not [r for r in routes if secrets_seen["conversation_id"] in r or "c_doesnotexist" in r]

    # every rule group loaded and evaluated without error
    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups: list[dict[str, Any]] = httpx.get(
            f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if not rules or any(r["lastEvaluation"].startswith("0001") for r in rules):
            return None
        return groups

    groups = ms.poll("rule evaluation", rules_evaluated)
    assert {g["name"] for g in groups} == {"nova.recording", "nova.alerts"}
    shipped = len(ms.alert_rules()) + len(ms.recording_rules())
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == shipped
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad
    # recording rules produce data from the live service
    ms.poll("recorded request rate", lambda: _query(
        prom, 'namespace_job:http_requests:rate5m{job="nova"}')["data"]["result"])

    # every dashboard expression evaluates without error
    errors = []
    for title, expr in ms.dashboard_expressions():
        result = _query(prom, expr)
        if result.get("status") != "success":
            errors.append((title, expr, result.get("error")))
    assert not errors
    replicas = _query(prom, ms.fill_grafana_variables(
        'sum(up{namespace="$namespace", job="nova"})'))["data"]["result"]
    assert replicas[0]["value"][1] == "1"

    # Alertmanager: a critical alert inhibits the warning of the same namespace and job
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alerts = [
        {"labels": {"alertname": "NovaDown", "severity": "critical", "job": "nova",
                    "namespace": "nova-messaging"}, "startsAt": now},
        {"labels": {"alertname": "NovaHighLatency", "severity": "warning", "job": "nova",
                    "namespace": "nova-messaging"}, "startsAt": now},
        {"labels": {"alertname": "NovaMemoryNearLimit", "severity": "warning",
                    "job": "kubernetes-cadvisor", "namespace": "nova-messaging"},
         "startsAt": now},
    ]
    am_url = f"http://127.0.0.1:{am_port}"
    assert httpx.post(f"{am_url}/api/v2/alerts", json=alerts, timeout=10).status_code == 200

    def states() -> dict[str, str] | None:
        got = httpx.get(f"{am_url}/api/v2/alerts", timeout=10).json()
        out = {a["labels"]["alertname"]: a["status"]["state"] for a in got}
        return out if len(out) == 3 and out.get("NovaHighLatency") == "suppressed" else None

    final = ms.poll("inhibition", states, timeout=30)
    assert final == {"NovaDown": "active", "NovaHighLatency": "suppressed",
                     "NovaMemoryNearLimit": "active"}
    assert am.proc.poll() is None
    # the critical group goes out to Slack (group_wait 10 s), with the webhook URL that
    # Alertmanager read from its file
    def slack_critical() -> list[dict[str, Any]]:
        return [b for b in slack_sink.bodies if "NovaDown" in json.dumps(b)]

    posted = ms.poll("the critical alert on Slack", slack_critical, timeout=45)
    assert posted[0]["channel"] == "#nova-alerts"

    # the service's own logs: JSON lines, request ids, no secrets, no bodies
    log_text = nova.log_path.read_text()
    for secret in (password, body, secrets_seen["access_token"], secrets_seen["refresh_token"]):
        assert secret not in log_text
    records = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    access = [r for r in records if r.get("logger") == "nova.access"]
    assert access, log_text[-2000:]
    assert {"method", "route", "status", "duration_ms", "request_id"} <= access[0].keys()
    assert any(r["request_id"] == "e2e-monitoring-1" and r["route"] == "/api/v1/users/me"
               for r in access)
