"""The files under contrib/ (systemd unit, logrotate file, nginx site) and the system
tools that check them: shared by test_contrib, test_nginx and test_ops."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
UNIT = CONTRIB / "clawproxy.service"
LOGROTATE = CONTRIB / "clawproxy.logrotate"
NGINX_SITE = CONTRIB / "nginx" / "clawproxy.conf"
TOOL_TIMEOUT_S = 60


def need(tool: str) -> str:
    """The tool's path; a missing tool skips on a workstation but fails in CI, where
    scripts/test installs it."""
    path = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (scripts/test installs it)")
        pytest.skip(f"{tool} is not installed; scripts/test installs it")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)


def logrotate_for(log_dir: Path, postrotate: str | None = None) -> str:
    """The contrib file for a test: logs in ``log_dir``, owned by whoever runs the tests."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    text = LOGROTATE.read_text()
    assert "/var/log/clawproxy/*.log" in text
    text = text.replace("/var/log/clawproxy/*.log", f"{log_dir}/*.log")
    text = text.replace("clawproxy clawproxy", f"{user} {group}")
    if postrotate is not None:
        text = re.sub(
            r"postrotate\n.*?endscript", f"postrotate\n        {postrotate}\n    endscript", text,
            flags=re.S,
        )  # fmt: skip
    return text


def nginx_main_conf(prefix: Path, site: str) -> str:
    """A minimal main config around a site file, everything under ``prefix``."""
    for name in ("logs", "tmp"):
        (prefix / name).mkdir(exist_ok=True)
    (prefix / "site.conf").write_text(site)
    return f"""
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/site.conf;
}}
"""
