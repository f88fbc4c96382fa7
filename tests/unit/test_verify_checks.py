"""nova verify without a network: the report, the pure checks, the CLI's argument rules, and
the constants that must stay in step with the shipped configs and nova/metrics.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import REGISTRY

import nova.metrics  # noqa: F401  (registers every metric)
from nova.cli import main
from nova.verify import Report, Result, Status
from nova.verify.argocd import APPLICATIONS
from nova.verify.https import SECURITY_HEADERS, check_security_headers, host_port
from nova.verify.prometheus import RECEIVERS, REQUIRED_SERIES, RULE_GROUPS
from nova.verify.result import failed, passed, skipped, warned
from nova.verify.turn import target_from_urls, turn_entry

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "config"


def test_verify_required_series_are_all_exported_by_nova() -> None:
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("_count", "_sum"), "untyped": ("",)}
    series = {family.name + suffix for family in REGISTRY.collect()
              for suffix in suffixes.get(family.type, ("",))}
    assert [n for n in REQUIRED_SERIES if n not in series] == []


def test_verify_rule_groups_match_the_shipped_rules() -> None:
    groups = yaml.safe_load((CONFIG / "prometheus" / "rules" / "nova.rules.yml").read_text())
    assert {g["name"] for g in groups["groups"]} == set(RULE_GROUPS)


def test_verify_receivers_match_the_shipped_alertmanager_config() -> None:
    config = yaml.safe_load((CONFIG / "alertmanager" / "alertmanager.yml").read_text())
    assert {r["name"] for r in config["receivers"]} == set(RECEIVERS)


def test_verify_applications_match_the_shipped_gitops_component() -> None:
    names = {yaml.safe_load(p.read_text())["metadata"]["name"]
             for p in (ROOT / "deploy" / "components" / "gitops").glob(
                 "argocd-application-*.yaml")}
    assert names == set(APPLICATIONS)


def test_verify_report_ok_only_without_failures_and_renders_hints() -> None:
    report = Report("https://chat.example.com", [
        passed("https.health", '200 {"status":"ok"}'),
        warned("https.certificate", "expires in 3 days", "renew it"),
        skipped("argocd.turn-server", "no --argocd URL given"),
    ])
    assert report.ok
    table = report.table()
    assert "  WARN  https.certificate" in table and "-> renew it" in table
    assert table.rstrip().endswith("(1 passed, 0 failed, 1 warnings, 1 skipped)")
    report.results.append(failed("turn.stun", "no answer", "start coturn"))
    assert not report.ok
    body = json.loads(report.to_json())
    assert body["ok"] is False and body["summary"]["fail"] == 1
    assert body["results"][-1] == {"name": "turn.stun", "status": "fail",
                                   "detail": "no answer", "hint": "start coturn"}
    assert report.get("turn.stun").status is Status.FAIL
    assert isinstance(report.get("https.health"), Result)


def _response(headers: list[tuple[str, str]]) -> httpx.Response:
    return httpx.Response(200, headers=headers, json={"status": "ok"})


def test_verify_security_headers_pass_fail_and_duplicates() -> None:
    good = [(h, v) for h, (_, v) in SECURITY_HEADERS.items()]
    assert check_security_headers(_response(good)).status is Status.PASS
    no_hsts = [(h, v) for h, v in good if h != "strict-transport-security"]
    result = check_security_headers(_response(no_hsts))
    assert result.status is Status.FAIL
    assert "missing strict-transport-security" in result.detail
    assert "max-age=31536000" in result.hint
    doubled = [*good, ("x-frame-options", "SAMEORIGIN")]
    assert "x-frame-options sent 2 times" in check_security_headers(_response(doubled)).detail
    weak = [(h, "sniff" if h == "x-content-type-options" else v) for h, v in good]
    assert check_security_headers(_response(weak)).status is Status.FAIL
    assert check_security_headers(None).status is Status.SKIP


def test_verify_turn_target_from_ice_server_urls() -> None:
    assert target_from_urls(["turns:turn.example.com:5349?transport=tcp",
                             "turn:turn.example.com:3478?transport=tcp",
                             "turn:turn.example.com?transport=udp"]) == ("turn.example.com", 3478)
    assert target_from_urls(["turn:[2001:db8::1]:3479"]) == ("2001:db8::1", 3479)
    assert target_from_urls(["turn:turn.example.com:3478?transport=tcp"]) is None
    body: dict[str, Any] = {"ice_servers": [{"urls": ["stun:s.example.com"]},
                            {"urls": ["turn:t.example.com"], "username": "1:u",
                             "credential": "c"}], "ttl_seconds": 600}
    assert turn_entry(body) == body["ice_servers"][1]
    assert turn_entry({"ice_servers": [{"urls": ["stun:s.example.com"]}]}) is None


def test_verify_url_must_be_https() -> None:
    assert host_port("https://chat.example.com") == ("chat.example.com", 443)
    assert host_port("https://[::1]:8443/") == ("::1", 8443)
    for bad in ("http://chat.example.com", "chat.example.com", "https://"):
        with pytest.raises(ValueError):
            host_port(bad)


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "http://chat.example.com"], "must be https://"),
    (["--url", "https://x", "--insecure", "--ca-file", __file__], "exclude each other"),
    (["--url", "https://x", "--username", "ops"], "go together"),
    (["--url", "https://x", "--argocd", "https://argocd.example.com"], "go together"),
])
def test_verify_cli_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["verify", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
