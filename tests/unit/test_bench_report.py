"""The report writer: tables, ratios and plots from JSON lines (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import BEGIN, END, write_report
from bench.wire import OP_TEXT, encode_frame


def record(target: str, scenario: str, metrics: dict[str, object], ts: str,
           mode: str = "quick") -> dict[str, object]:
    return {"target": target, "scenario": scenario, "mode": mode, "ts": ts, "run_id": "r1",
            "params": {"rooms": 50, "members": 10}, "metrics": metrics,
            "machine": {"cores": 2, "cpu_model": "Test CPU", "kernel": "6.1",
                        "versions": {"python": "3.11.7", "websockets": "17.4"}}}


def fanout(delivered: float) -> dict[str, object]:
    return {"delivered_per_s": delivered, "sends_per_s": delivered / 10, "server_cpu_pct": 90.0,
            "loadgen_cpu_pct": 50.0, "errors": 0}


def test_report_rewrites_only_the_generated_block_with_ratios(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    lines = [
        record("baseline-ws", "fanout", fanout(60000.0), "2026-11-26T06:00:00Z"),
        record("nova-sqlite", "fanout", fanout(1.0), "2026-11-26T06:00:00Z"),
        record("nova-sqlite", "fanout", fanout(33000.0), "2026-11-26T06:10:00Z"),  # newest
        record("nova-sqlite", "fanout", fanout(5.0), "2026-11-26T06:20:00Z", mode="tiny"),
    ]
    results.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nhand-written intro\n\n{BEGIN}\nold\n{END}\n\nnotes stay\n")
    write_report([results], doc, tmp_path / "img")
    text = doc.read_text()
    assert "hand-written intro" in text and "notes stay" in text and "\nold\n" not in text
    row = next(line for line in text.splitlines() if line.startswith("| nova-sqlite | 50x10"))
    assert "33,000.0" in row and "| 0.55 |" in row
    assert "Test CPU" in text and "websockets 17.4" in text
    assert (tmp_path / "img" / "bench-fanout.png").read_bytes()[:4] == b"\x89PNG"


def test_wire_frames_are_masked_with_the_zero_key() -> None:
    frame = encode_frame(b"x" * 200, OP_TEXT)
    assert frame[0] == 0x81 and frame[1] == 0x80 | 126
    assert int.from_bytes(frame[2:4], "big") == 200 and frame[4:8] == b"\0\0\0\0"
    assert frame[8:] == b"x" * 200
