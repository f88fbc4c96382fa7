"""nginx on the shipped deploy/config/nginx/nova.conf.template, as a plain process with its own
prefix on loopback (tests/e2e/test_nginx_edge.py and test_verify_live.py use it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port, missing

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "config" / "nginx" / "nova.conf.template"
TEMPLATE_VARS = ("NOVA_SERVER_NAME", "NOVA_UPSTREAM", "NOVA_TLS_CERT", "NOVA_TLS_KEY",
                 "NOVA_HTTPS_PORT", "NOVA_HTTP_PORT", "NOVA_LISTEN_ADDRESS", "NOVA_LIMIT_CONN",
                 "NOVA_CORS_ORIGIN_REGEX")
NGINX_CONF = (
    "worker_processes 1;\npid logs/nginx.pid;\nerror_log logs/error.log warn;\n"
    "events { worker_connections 512; }\n"
    "http {\n  access_log logs/access.log;\n"
    "  client_body_temp_path tmp/body;\n  proxy_temp_path tmp/proxy;\n"
    "  fastcgi_temp_path tmp/fastcgi;\n  uwsgi_temp_path tmp/uwsgi;\n"
    "  scgi_temp_path tmp/scgi;\n  include nova.conf;\n}\n")


def render_template(text: str, values: dict[str, str]) -> str:
    """envsubst with an explicit variable list: ``$NAME`` and ``${NAME}`` of listed names only;
    everything else (nginx's own ``$variables``) is left as it is."""
    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values[name] if name in values else match.group(0)

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)


def nginx_binary() -> str:
    """nginx's path; FAIL under CI=true when missing, else skip with the reason."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        missing("nginx is not installed (scripts/apt-packages.txt: nginx=nginx)")
    assert found is not None
    return found


class Nginx:
    """``configure()`` renders the template and starts nginx, or reloads it when running (e.g.
    with another certificate); ``stop()`` quits it. Workers run as nobody when started by
    root, so the prefix and the key files must be world-readable."""

    def __init__(self, work: Path, upstream: str, *, server_name: str = "127.0.0.1",
                 limit_conn: int = 50,
                 cors_origin_regex: str = r"^https://app\.example\.com$") -> None:
        binary = nginx_binary()
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o755)
        for sub in ("conf", "logs", "tmp"):
            (work / sub).mkdir(exist_ok=True)
            os.chmod(work / sub, 0o755)
        self.values = {"NOVA_SERVER_NAME": server_name, "NOVA_UPSTREAM": upstream,
                       "NOVA_HTTPS_PORT": str(free_port()), "NOVA_HTTP_PORT": str(free_port()),
                       "NOVA_LISTEN_ADDRESS": "127.0.0.1", "NOVA_LIMIT_CONN": str(limit_conn),
                       "NOVA_CORS_ORIGIN_REGEX": cors_origin_regex}
        self.https_port = int(self.values["NOVA_HTTPS_PORT"])
        self.http_port = int(self.values["NOVA_HTTP_PORT"])
        self.args = [binary, "-p", str(work), "-c", "conf/nginx.conf", "-e", "logs/error.log"]
        self.running = False

    def configure(self, cert: Path, key: Path) -> None:
        values = {**self.values, "NOVA_TLS_CERT": str(cert), "NOVA_TLS_KEY": str(key)}
        assert set(values) == set(TEMPLATE_VARS)
        rendered = render_template(TEMPLATE.read_text(), values)
        assert "${NOVA_" not in rendered
        (self.work / "conf" / "nova.conf").write_text(rendered)
        (self.work / "conf" / "nginx.conf").write_text(NGINX_CONF)
        check = subprocess.run([*self.args, "-t", "-q"], capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stderr
        if self.running:
            subprocess.run([*self.args, "-s", "reload"], check=True, timeout=30)
        else:
            subprocess.run(self.args, check=True, timeout=30)
            self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        subprocess.run([*self.args, "-s", "quit"], timeout=30, check=False)
        pid_file = self.work / "logs" / "nginx.pid"
        for _ in range(100):
            if not pid_file.exists():
                break
            time.sleep(0.1)
        else:
            subprocess.run([*self.args, "-s", "stop"], timeout=30, check=False)
        self.running = False
