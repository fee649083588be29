"""Process signals: SIGTERM/SIGINT drain and stop, SIGHUP reopens logs and rereads keys.

Theory of operation: handlers run on the event loop (``loop.add_signal_handler``), so they
may touch gateway state directly and never race a request. SIGTERM or SIGINT sets the stop
event once; ``runner.serve`` then calls ``Gateway.stop()``, which closes the listeners and
lets running streams finish for up to ``server.drain_timeout`` before it cuts the rest, and
the process exits 0. A second SIGTERM/SIGINT while draining means "now": exit 1 at once.

SIGHUP is the logrotate hook (``contrib/clawproxy.logrotate``) and systemd's
``ExecReload``: the log file is reopened under its configured name (logrotate has moved the
old one away), the API key file is reread (``KeyStore.reload``; on error the old keys
stay in force), and so is the config file's ``nodes:`` list (``Gateway.reload_nodes``: new
nodes added, removed ones drained, changed caps and weights applied; a bad file or change
is logged and the running table stays as it was). None of it interrupts a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from clawproxy.config import Config, ConfigError
from clawproxy.gateway import Gateway
from clawproxy.nodes.table import NodeChangeError
from clawproxy.policy.auth import KeyFileError
from clawproxy.telemetry.logs import reopen_log_files

log = logging.getLogger("clawproxy")

# Exit status when a second stop signal cuts the drain short.
EXIT_FORCED = 1


# Rereads the configuration as this process runs it (a worker's with its shares).
Reread = Callable[[], Config]


def install(gw: Gateway, stop: asyncio.Event, reread: Reread | None = None) -> None:
    """Route SIGTERM/SIGINT to ``stop`` and SIGHUP to ``reload(gw)`` on the running loop."""
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        if stop.is_set():
            # A second signal while draining: the operator wants out now.
            os._exit(EXIT_FORCED)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, reload, gw, reread)


def reload(gw: Gateway, reread: Reread | None = None) -> None:
    """SIGHUP: reopen the log file, reread the API key file and the nodes."""
    try:
        if reopen_log_files():
            log.info("SIGHUP: log file reopened")
    except OSError as exc:
        log.error("SIGHUP: cannot reopen the log file (still writing the old one): %s", exc)
    try:
        gw.keys.reload()
    except KeyFileError as exc:
        log.error("SIGHUP: %s; the old keys stay in force", exc)
    if reread is not None:
        reload_nodes(gw, reread)


def reload_nodes(gw: Gateway, reread: Reread) -> None:
    try:
        gw.reload_nodes(reread())
    except ConfigError as exc:
        log.error("SIGHUP: config error: %s; the nodes stay as they were", exc)
    except NodeChangeError as exc:
        log.error("SIGHUP: %s; the nodes stay as they were", exc)
