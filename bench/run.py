"""Run benchmark scenarios: start the target server(s), run the load generator, record JSON lines.

    python -m bench.run --scenario fanout --target nova-sqlite --quick
    python -m bench.run --all --quick            # every scenario on every target, then the report

The server is pinned to core 0 and the load generator to core 1 (``taskset``), each target gets
a fresh data directory (and, for PostgreSQL, a fresh database) per scenario, and every process
started here is stopped here. Results are appended to ``bench/results/<date>.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

SCENARIOS = ["fanout", "latency", "idle", "reconnect", "calls", "rest"]
TARGETS = {
    # name: (load generator kind, scenarios it supports)
    "baseline-ws": ("ws", ["fanout", "latency", "idle", "reconnect"]),
    "baseline-sqlite": ("ws", ["fanout", "latency", "idle", "reconnect"]),
    "baseline-sqlite-each": ("ws", ["fanout", "latency"]),
    "baseline-socketio": ("socketio", ["fanout", "latency", "idle"]),
    "nova-sqlite": ("nova", SCENARIOS),
    "nova-pg": ("nova", ["fanout", "latency", "reconnect", "calls", "rest"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    if cpus and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpus, *argv]
    return argv


@dataclass
class Server:
    """The processes of one target, and where they listen."""

    urls: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        with log.open("wb") as fh:
            proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        self.logs.append(log)
        self.urls.append(f"http://127.0.0.1:{port}")

    def wait_ready(self, path: str | None, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        for proc, url, log in zip(self.procs, self.urls, self.logs, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}):\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {timeout}s:\n{tail(log)}")
                try:
                    if path is None:
                        port = int(url.rsplit(":", 1)[1])
                        with socket.create_connection(("127.0.0.1", port), timeout=1):
                            break
                    elif httpx.get(url + path, timeout=2).status_code == 200:
                        break
                except (OSError, httpx.HTTPError):
                    pass
                time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def psql(sql: str) -> None:
    subprocess.run(["psql", f"{PG_ADMIN}/postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
                   check=True, capture_output=True, timeout=60)


# Nova accepts tokens minted by an external auth service and provisions the account on first
# sight; the load generator mints them with this secret (BENCH_EXTERNAL_JWT_SECRET).
EXTERNAL_JWT_SECRET = secrets.token_hex(32)


def nova_env(data_dir: Path, secret: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOVA_")}
    env.update({
        "NOVA_DATA_DIR": str(data_dir), "NOVA_RATE_LIMITS": "off", "NOVA_JWT_SECRET": secret,
        "NOVA_LOG_LEVEL": "warning", "NOVA_LOG_FORMAT": "text",
        "NOVA_ACCESS_TOKEN_TTL_SECONDS": "86400",
        # Benchmarks open many sockets per account and per address (loopback).
        "NOVA_WS_MAX_SOCKETS_PER_USER": "100000", "NOVA_MAX_CONNECTIONS_PER_IP": "1000000",
        "NOVA_MAX_GROUP_MEMBERS": "10000", "NOVA_EXTERNAL_JWT_SECRET": EXTERNAL_JWT_SECRET,
    })
    env.update(extra)
    return env


@contextlib.contextmanager
def target_server(name: str, work: Path, cpus: str | None) -> Iterator[Server]:
    """Start the target's server process(es) in ``work``; stop them on the way out."""
    py = sys.executable
    server = Server()
    db_name = None
    try:
        if name.startswith("baseline-"):
            module = {"baseline-ws": "ws_broadcast", "baseline-sqlite": "ws_sqlite",
                      "baseline-sqlite-each": "ws_sqlite",
                      "baseline-socketio": "socketio_room"}[name]
            port = free_port()
            argv = [py, "-m", f"bench.baselines.{module}", "--port", str(port)]
            if module == "ws_sqlite":
                argv += ["--db", str(work / "baseline.db")]
            if name == "baseline-sqlite-each":
                argv.append("--commit-each")
            server.start(pinned(cpus, argv), dict(os.environ), port, work / "server.log")
            server.wait_ready(None)
        elif name == "nova-sqlite":
            env = nova_env(work / "data", secrets.token_hex(32))
            subprocess.run([py, "-m", "nova", "migrate"], env=env, cwd=ROOT, check=True,
                           capture_output=True, timeout=120)
            port = free_port()
            server.start(pinned(cpus, [py, "-m", "nova", "serve", "--host", "127.0.0.1",
                                       "--port", str(port)]), env, port, work / "server.log")
            server.wait_ready("/health")
        elif name == "nova-pg":
            db_name = f"bench_{secrets.token_hex(4)}"
            psql(f"CREATE DATABASE {db_name}")
            env = nova_env(work / "data", secrets.token_hex(32),
                           NOVA_DATABASE_URL=f"{PG_ADMIN}/{db_name}", NOVA_REDIS_URL=REDIS_URL,
                           NOVA_REDIS_PREFIX=f"bench{secrets.token_hex(3)}")
            subprocess.run([py, "-m", "nova", "migrate"], env=env, cwd=ROOT, check=True,
                           capture_output=True, timeout=120)
            for i in range(2):
                port = free_port()
                server.start(pinned(cpus, [py, "-m", "nova", "serve", "--host", "127.0.0.1",
                                           "--port", str(port)]),
                             {**env, "NOVA_INSTANCE_ID": f"bench-{i}"}, port,
                             work / f"server-{i}.log")
            server.wait_ready("/ready")
        else:
            raise SystemExit(f"unknown target {name!r}")
        yield server
    finally:
        server.stop()
        if db_name:
            with contextlib.suppress(subprocess.SubprocessError):
                psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")


def run_one(target: str, scenario: str, mode: str, run_id: str, out: Path,
            server_cpus: str | None, loadgen_cpus: str | None,
            overrides: list[list[str]], timeout: float) -> dict[str, object]:
    kind, supported = TARGETS[target]
    if scenario not in supported:
        raise SystemExit(f"{target} does not support {scenario} (supports {supported})")
    with tempfile.TemporaryDirectory(prefix=f"bench-{target}-") as tmp, \
            target_server(target, Path(tmp), server_cpus) as server:
        argv = [sys.executable, "-m", "bench.loadgen", "--scenario", scenario, "--kind", kind,
                "--url", ",".join(server.urls), "--server-pid",
                ",".join(map(str, server.pids)), "--label", target, "--run-id", run_id,
                "--tag", secrets.token_hex(3), "--out", str(out)]
        if mode != "full":
            argv.append(f"--{mode}")
        for key, value in overrides:
            argv += ["--set", key, value]
        env = {**os.environ, "BENCH_EXTERNAL_JWT_SECRET": EXTERNAL_JWT_SECRET}
        proc = subprocess.run(pinned(loadgen_cpus, argv), cwd=ROOT, capture_output=True,
                              timeout=timeout, text=True, env=env)
        if proc.returncode != 0:
            logs = "\n".join(tail(log, 20) for log in server.logs)
            raise RuntimeError(f"load generator failed ({proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}\n--- server log ---\n{logs}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument("--all", action="store_true",
                        help="every scenario on every target that supports it, then the report")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="about a minute per scenario")
    speed.add_argument("--tiny", action="store_true", help="seconds; for the smoke test")
    parser.add_argument("--set", nargs=2, action="append", default=[],
                        metavar=("PARAM", "VALUE"), help="scenario parameter override")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON lines file (default bench/results/<date>.jsonl)")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--loadgen-cpus", default="1")
    parser.add_argument("--timeout", type=float, default=900.0, help="per scenario, seconds")
    parser.add_argument("--report", action="store_true", help="write docs/benchmarks.md after")
    parser.add_argument("--keep-going", action="store_true", help="log failures and continue")
    args = parser.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers get stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    scenarios = args.scenario or (SCENARIOS if args.all else None)
    targets = args.target or (list(TARGETS) if args.all else None)
    if not scenarios or not targets:
        parser.error("give --scenario and --target, or --all")
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    out = args.out or RESULTS / f"{time.strftime('%Y-%m-%d')}.jsonl"
    failures = 0
    for target in targets:
        for scenario in scenarios:
            if scenario not in TARGETS[target][1]:
                if not args.all:
                    print(f"skip {target}/{scenario}: not supported", file=sys.stderr)
                continue
            started = time.monotonic()
            try:
                result = run_one(target, scenario, mode, run_id, out, args.server_cpus,
                                 args.loadgen_cpus, args.set, args.timeout)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                failures += 1
                print(f"FAIL {target}/{scenario}: {exc}", file=sys.stderr)
                if not args.keep_going:
                    return 1
                continue
            took = time.monotonic() - started
            print(f"{target}/{scenario} ({took:.0f}s): {json.dumps(result['metrics'])}",
                  flush=True)
    if args.report or args.all:
        from bench.report import write_report

        print(write_report())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
