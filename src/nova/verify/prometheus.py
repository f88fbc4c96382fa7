"""Monitoring: Prometheus scrapes Nova (targets up, every required metric has series), the
rule groups are loaded and evaluate cleanly, Alertmanager is healthy with its receivers."""

from __future__ import annotations

from typing import Any

import httpx

from nova.verify.result import Result, failed, passed, warned

# PRODUCT.md's observability contract and the domain counters of nova/metrics.py, as series
# names (histograms by their _bucket); tests/unit/test_verify_checks.py keeps them exported.
REQUIRED_SERIES: tuple[str, ...] = (
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "websocket_connections_active",
    "websocket_errors_total",
    "database_query_duration_seconds_bucket",
    "database_errors_total",
    "nova_messages_sent_total",
    "nova_messages_delivered_total",
    "nova_calls_total",
    "nova_turn_credentials_issued_total",
)
# The groups of deploy/config/prometheus/rules/nova.rules.yml (a test keeps them in step).
RULE_GROUPS: tuple[str, ...] = ("nova.recording", "nova.alerts")
# The receivers of deploy/config/alertmanager/alertmanager.yml (a test keeps them in step).
RECEIVERS: tuple[str, ...] = ("critical", "slack-warnings")


async def _get(http: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await http.get(path, params=params or None)
    r.raise_for_status()
    body = r.json()
    if isinstance(body, dict) and body.get("status") == "error":
        raise ValueError(body.get("error"))
    return body


async def check_targets(http: httpx.AsyncClient, job: str = "nova") -> Result:
    name = "prometheus.targets"
    try:
        data = (await _get(http, "/api/v1/targets", state="active"))["data"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return failed(name, f"GET /api/v1/targets: {exc}", "is --prometheus the right URL?")
    targets = [t for t in data.get("activeTargets", []) if t["labels"].get("job") == job]
    if not targets:
        return failed(name, f"no active target of job {job!r}",
                      "the Nova pods need the prometheus.io/scrape, /port and /path "
                      "annotations, in the namespace the shipped prometheus.yml watches")
    down = [t for t in targets if t.get("health") != "up"]
    if down:
        errs = "; ".join(f"{t['labels'].get('instance')}: {t.get('health')} "
                         f"{t.get('lastError') or ''}".strip() for t in down)
        return failed(name, f"{len(down)} of {len(targets)} {job} targets not up: {errs}",
                      "check the pods and that /metrics answers on the annotated port")
    return passed(name, f"{len(targets)} {job} target(s) up")


async def check_metrics(http: httpx.AsyncClient, job: str = "nova",
                        required: tuple[str, ...] = REQUIRED_SERIES) -> Result:
    name = "prometheus.metrics"
    expr = f'count by (__name__) ({{__name__=~"{"|".join(required)}", job="{job}"}})'
    try:
        result = (await _get(http, "/api/v1/query", query=expr))["data"]["result"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return failed(name, f"query failed: {exc}", "is --prometheus the right URL?")
    have = {s["metric"]["__name__"] for s in result}
    missing = [n for n in required if n not in have]
    if missing:
        return failed(name, f"no series for {', '.join(missing)}",
                      "a metric_relabel_configs rule may drop them, or Nova is too old; "
                      "alerts and dashboards querying them are blind")
    return passed(name, f"all {len(required)} required metrics have series")


async def check_rules(http: httpx.AsyncClient,
                      expected: tuple[str, ...] = RULE_GROUPS) -> Result:
    name = "prometheus.rules"
    try:
        groups = (await _get(http, "/api/v1/rules"))["data"]["groups"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return failed(name, f"GET /api/v1/rules: {exc}", "is --prometheus the right URL?")
    loaded = {g["name"] for g in groups}
    missing = [g for g in expected if g not in loaded]
    if missing:
        return failed(name, f"rule groups not loaded: {', '.join(missing)}",
                      "mount the rules ConfigMap where prometheus.yml's rule_files point")
    rules = [r for g in groups if g["name"] in expected for r in g["rules"]]
    broken = [f"{r['name']}: {r.get('lastError') or r.get('health')}" for r in rules
              if r.get("health") not in ("ok", "unknown")]
    if broken:
        return failed(name, "evaluation errors: " + "; ".join(broken[:5]),
                      "run promtool check rules / promtool test rules on the shipped rules")
    never = [r["name"] for r in rules if r.get("health") == "unknown"]
    if never:
        return warned(name, f"{len(rules)} rules loaded, {len(never)} not evaluated yet",
                      "run again after one evaluation_interval")
    return passed(name, f"{len(groups)} groups, {len(rules)} rules, no evaluation errors")


async def check_alertmanager(http: httpx.AsyncClient,
                             expected: tuple[str, ...] = RECEIVERS) -> list[Result]:
    health, recv = "alertmanager.health", "alertmanager.receivers"
    hint = "is --alertmanager the right URL? kubectl get pods -n nova-monitoring"
    try:
        r = await http.get("/-/healthy")
        status = await _get(http, "/api/v2/status")
    except (httpx.HTTPError, ValueError) as exc:
        return [failed(health, f"{type(exc).__name__}: {exc}", hint),
                failed(recv, "Alertmanager did not answer", hint)]
    cluster = (status.get("cluster") or {}).get("status", "")
    out = [passed(health, f"healthy, cluster {cluster or 'n/a'}, version "
                          f"{(status.get('versionInfo') or {}).get('version', '?')}")
           if r.status_code == 200 and cluster in ("ready", "disabled", "") else
           failed(health, f"/-/healthy {r.status_code}, cluster {cluster}",
                  "check the Alertmanager peers and logs")]
    try:
        names = {x["name"] for x in await _get(http, "/api/v2/receivers")}
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        out.append(failed(recv, f"GET /api/v2/receivers: {exc}", hint))
        return out
    missing = [n for n in expected if n not in names]
    out.append(failed(recv, f"receivers missing: {', '.join(missing)}",
                      "deploy the shipped alertmanager.yml") if missing else
               passed(recv, ", ".join(sorted(names))))
    return out
