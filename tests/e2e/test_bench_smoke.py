"""The benchmark harness end to end, in its tiny mode: baseline (a) started as a process,
the load generator as another, a well-formed JSON line at the end. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def run_bench(tmp_path: Path, *args: str) -> list[dict[str, object]]:
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--target", "baseline-ws",
         "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_bench_fanout_against_ws_baseline_writes_a_result(tmp_path: Path) -> None:
    (rec,) = run_bench(tmp_path, "--scenario", "fanout")
    assert rec["scenario"] == "fanout" and rec["target"] == "baseline-ws"
    assert rec["mode"] == "tiny"
    metrics = rec["metrics"]
    assert metrics["sockets"] == 4 * 3
    assert metrics["errors"] == 0
    # Messages moved (a count, not a speed): the senders got acks, the members got events.
    assert metrics["sends_per_s"] > 0 and metrics["delivered_per_s"] > 0
    assert rec["loadgen"]["gc"] == "disabled"
    machine = rec["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"]
    assert machine["versions"]["websockets"]


def test_bench_reconnect_replays_in_order_without_duplicates(tmp_path: Path) -> None:
    (rec,) = run_bench(tmp_path, "--scenario", "reconnect")
    metrics = rec["metrics"]
    assert metrics["resumers"] == 12 and metrics["backlog_per_resumer"] == 5
    assert metrics["out_of_order_or_duplicate"] == 0
    assert metrics["errors"] == 0
