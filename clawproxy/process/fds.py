"""Open files: make room for ``server.max_connections`` under RLIMIT_NOFILE at start.

Theory of operation
-------------------
Every client connection is a file descriptor, and so is every connection to Ollama, each
listening socket, the log file, the event loop's own (epoll, its wake-up pipes, libuv's
spare) and NVML's device files. A process out of descriptors cannot accept(): libuv
(uvloop) then accepts and closes the waiting connections itself, so clients, admin
``/health`` included, get an empty reply and nothing is logged. A shell's soft limit is
often 1024, under the default ``max_connections`` of 2048. So before the gateway is built,
``fit_open_files`` works out what its limits can use::

    server.max_connections + gateway.admin_max_connections
      + Ollama: gateway.max_concurrent + upstream.pool_size + the admin pool's idle ones
      + FD_MARGIN (the process itself)

and raises the soft limit toward the hard one as far as that needs (never lowering it,
never past the hard limit). Where even the hard limit is too low, ``max_connections`` is
clamped to what fits, with one warning naming both numbers: a flood then meets clean 503s
from the listener, not a process out of descriptors. When not one public connection fits,
start-up stops with a configuration error (exit 2).

The decision is a pure function (``plan_open_files``); ``fit_open_files`` reads and sets
the limit around it. Each ``--workers`` worker fits its own: the limit is per process.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from collections.abc import Callable
from typing import NamedTuple

from clawproxy.config import Config, ConfigError
from clawproxy.ollama.modelctl import ADMIN_POOL_IDLE

log = logging.getLogger("clawproxy")

# RLIM_INFINITY as Python shows it (-1 on Linux): no limit.
INFINITY = resource.RLIM_INFINITY
# Descriptors the process holds besides connections: 16 measured on an idle gateway (stdio,
# epoll, io_uring, the loop's pipes and eventfd, libuv's spare, listening sockets), plus
# the log file, NVML's device files (a few per GPU), a webhook, a key-file reread, and a
# demo's simulator. Twice the measured count.
FD_MARGIN = 32


class FdPlan(NamedTuple):
    """The soft limit to run with, and the ``max_connections`` that fits under it (0: none)."""

    soft: int
    max_connections: int


def reserved_descriptors(config: Config) -> int:
    """Descriptors kept for everything but public connections (see the module doc)."""
    gw = config.gateway
    upstream = gw.max_concurrent + config.upstream.pool_size + ADMIN_POOL_IDLE
    return gw.admin_max_connections + upstream + FD_MARGIN


def open_files_needed(config: Config) -> int:
    """The open-file limit the configuration can use at most."""
    return config.server.max_connections + reserved_descriptors(config)


def plan_open_files(max_connections: int, reserved: int, soft: int, hard: int) -> FdPlan:
    """The soft limit to set (as far up as needed, at most ``hard``) and the
    ``max_connections`` that fits under it. ``INFINITY`` stands for no limit."""
    needed = max_connections + reserved
    if soft == INFINITY or soft >= needed:
        return FdPlan(soft, max_connections)
    target = needed if hard == INFINITY else min(hard, needed)
    return FdPlan(target, max(0, min(max_connections, target - reserved)))


def fit_open_files(
    config: Config,
    *,
    limits: tuple[int, int] | None = None,
    set_soft: Callable[[int], None] | None = None,
) -> Config:
    """``config``, with ``max_connections`` clamped if it cannot fit; the soft open-file
    limit raised as far as needed. ``limits`` (soft, hard) and ``set_soft`` replace the
    process's for tests. Raises ``ConfigError`` when not one public connection fits."""
    soft, hard = limits if limits is not None else resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.server.max_connections
    reserved = reserved_descriptors(config)
    plan = plan_open_files(wanted, reserved, soft, hard)
    if plan.soft != soft:
        try:
            (set_soft or _set_soft_limit)(plan.soft)
        except (ValueError, OSError) as exc:
            # Refused (a hard limit above the kernel's nr_open, say): live with the soft one.
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, plan.soft, exc)
            plan = plan_open_files(wanted, reserved, soft, soft)
        else:
            log.info(
                "raised the open-file limit (RLIMIT_NOFILE) from %d to %d for "
                "server.max_connections %d",
                soft,
                plan.soft,
                wanted,
            )
    if plan.max_connections == wanted:
        return config
    why = (
        f"server.max_connections {wanted} does not fit the open-file limit {plan.soft} "
        f"(hard limit {_show(hard)}; {reserved} descriptors are kept for the admin port, "
        "Ollama and the process itself)"
    )
    way_out = "raise the limit (LimitNOFILE= under systemd, ulimit -n) or lower it"
    if plan.max_connections < 1:
        raise ConfigError(f"server.max_connections: {why}; {way_out}", key="server.max_connections")
    log.warning("%s: clamped to %d; %s", why, plan.max_connections, way_out)
    server = dataclasses.replace(config.server, max_connections=plan.max_connections)
    return dataclasses.replace(config, server=server)


def _set_soft_limit(soft: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _show(limit: int) -> str:
    return "unlimited" if limit == INFINITY else str(limit)
