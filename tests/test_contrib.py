"""contrib/: the systemd unit, the logrotate file and the nginx site, each checked by its own
tool (systemd-analyze verify, logrotate -d, nginx -t) and for the settings it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from contrib_helpers import LOGROTATE, NGINX_SITE, UNIT, logrotate_for, need, nginx_main_conf, run

from clawproxy.config import ServerConfig


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out.setdefault(key.strip(), []).append(value.strip())
    return out


# --- systemd ---------------------------------------------------------------------------------


def test_unit_settings() -> None:
    unit = directives(UNIT.read_text())
    assert unit["Restart"] == ["always"]
    assert unit["RestartSec"]
    assert unit["User"] == ["clawproxy"]
    for setting, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/log/clawproxy",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillSignal": "SIGTERM",
    }.items():
        assert unit[setting] == [value], setting
    # systemd waits longer than the drain before it resorts to SIGKILL.
    stop_s = int(unit["TimeoutStopSec"][0].removesuffix("s"))
    assert stop_s > ServerConfig().drain_timeout


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    # verify insists that ExecStart's program exists: point it at this checkout's clawproxy,
    # everything else verbatim.
    exe = Path(sys.executable).with_name("clawproxy")
    if not exe.exists():
        exe = Path(sys.executable)
    text = UNIT.read_text()
    assert "/opt/clawproxy/.venv/bin/clawproxy " in text
    unit = tmp_path / "clawproxy.service"
    unit.write_text(text.replace("/opt/clawproxy/.venv/bin/clawproxy ", f"{exe} "))
    result = run(tool, "verify", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    # Unknown or misplaced keys are only warnings to verify: there must be none.
    assert result.stdout + result.stderr == ""


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misplaced key is reported."""
    tool = need("systemd-analyze")
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nWantedBy=multi-user.target\n")
    result = run(tool, "verify", str(unit))
    assert "Unknown key" in result.stdout + result.stderr


# --- logrotate -------------------------------------------------------------------------------


def test_logrotate_settings() -> None:
    text = LOGROTATE.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "copytruncate" not in code  # SIGHUP reopens the file instead; no lost lines
    assert re.search(r"postrotate\n(.*\n)*\s*systemctl reload clawproxy\.service", text)
    assert "create 0640 clawproxy clawproxy" in text


def test_logrotate_debug_run_is_clean(tmp_path: Path) -> None:
    tool = need("logrotate")
    (tmp_path / "clawproxy.log").write_text("a line\n")
    conf = tmp_path / "clawproxy.logrotate"
    conf.write_text(logrotate_for(tmp_path))
    result = run(tool, "-d", "-s", str(tmp_path / "state"), str(conf))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # logrotate -d exits 0 even for a config it rejects: the errors are in the text.
    assert "error:" not in output, output
    assert f"considering log {tmp_path}/clawproxy.log" in output
    # And the same check does catch a broken file.
    conf.write_text(logrotate_for(tmp_path).replace("daily", "dailyy"))
    assert "error:" in run(tool, "-d", "-s", str(tmp_path / "state"), str(conf)).stderr


# --- nginx -----------------------------------------------------------------------------------


def nginx_test(tool: str, prefix: Path, site: str) -> subprocess.CompletedProcess[str]:
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_main_conf(prefix, site))
    return run(
        tool, "-t", "-e", str(prefix / "logs" / "error.log"), "-p", str(prefix), "-c", str(conf)
    )


def test_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    tool = need("nginx")
    result = nginx_test(tool, tmp_path, NGINX_SITE.read_text())
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    broken = NGINX_SITE.read_text().replace("proxy_buffering off;", "proxy_buffering of;")
    assert nginx_test(tool, tmp_path, broken).returncode != 0


def test_nginx_site_settings() -> None:
    site = NGINX_SITE.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in site.splitlines())
    upstream = re.search(r"upstream clawproxy \{(.*?)\}", code, re.S)
    assert upstream is not None
    keepalive = re.search(r"keepalive_timeout (\d+)s;", upstream.group(1))
    assert keepalive is not None
    assert int(keepalive.group(1)) < ServerConfig().keepalive_timeout
    assert "proxy_buffering off;" in code
    assert 'proxy_set_header Connection "";' in code
    assert "proxy_http_version 1.1;" in code
    assert re.search(r"proxy_read_timeout (\d+)s;", code)
    assert "location /v1/" in code and "location /ui" in code
    # The admin port is never a proxy target.
    assert re.findall(r"server (\S+);", code) == ["127.0.0.1:8080"]
    assert "18789" not in code
    assert "/metrics" not in code and "/stats" not in code
