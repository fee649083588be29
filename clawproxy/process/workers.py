"""Pre-forked workers: ``clawproxy --workers N`` runs N gateway processes on one port.

Theory of operation
-------------------
The process the operator started becomes a supervisor. It never runs an event loop. It
claims the public port, forks N workers, then waits for signals synchronously: the signals
it cares about are blocked and collected with ``sigtimedwait``, so no handler can interrupt
the fork and reap bookkeeping half-way.

Each worker is a whole gateway (``runner.serve``) whose public listener sets
``SO_REUSEPORT``: the kernel spreads new connections over the workers' listening sockets by
a hash of the address pair. The supervisor's reservation socket is bound with
``SO_REUSEPORT`` too but never listens, so it is never handed a connection. It keeps the
port ours while a worker restarts, and turns ``server.port: 0`` into one concrete port that
every worker shares.

One gateway per port. ``SO_REUSEPORT`` lets any later socket of the same user that sets it
too join the port and take a share of its connections: a second ``--workers`` gateway
would split the traffic and, with its own ``max_concurrent``, double what the GPU sees,
with nobody told. So before it reserves, the supervisor (1) takes the port's lock, an
abstract Unix socket named for the port number (``clawproxy-port-8080``): the kernel lets
one socket hold a name, drops it when the holder dies (SIGKILL included), and keeps one
such namespace per network namespace, as it does ports; and (2) binds the port once
without ``SO_REUSEPORT`` and lets go: anything already there, a lone gateway, a
supervisor of an older version without the lock, another program, makes that bind fail.
A lone gateway never sets ``SO_REUSEPORT``, so it cannot join a supervisor's port, and no
supervisor can join its. Either way the second gateway exits 2 with a line naming the port
(``runner.listen_failure``). What stays open: a program other than clawproxy that sets
``SO_REUSEPORT`` on the port after us, as the same user.

Why not one listening socket that the supervisor binds and the workers inherit (gunicorn's
way), which shuts out every program with no lock at all: the workers would then take
connections in the order they win ``accept()``, not by the kernel's hash. Two workers on
the 2-core dev machine, 40 connections paced or in one burst, a few runs each: a shared
socket split them as unevenly as 1/39 and 38/2, while ``SO_REUSEPORT`` kept every split
within 13/27. Each worker holds only its share of ``max_concurrent``, so an uneven split
turns into 503s while another worker has free slots.

Limits are split so that they still hold in total: worker i of N gets
``total // N``, plus one when ``i < total % N``, of ``gateway.max_concurrent`` and of
``gateway.queue_size``. The shares add up to the configured totals, so Ollama never sees
more than ``max_concurrent`` generations at once. More workers than ``max_concurrent`` is a
configuration error, since a worker without a slot could only refuse. The cost: admission
is per worker, so a request that lands on a full worker queues (or gets 503) even while
another worker has a free slot. ``server.max_connections`` and the rate limits count per
worker (they guard one process's descriptors; buckets are not shared between processes).

Admin port: only worker 0 binds ``gateway.debug_port``. ``Gateway.start()`` always opens
an admin listener, so the other workers get an ephemeral port on 127.0.0.1 that nothing
advertises. Admin pages therefore describe worker 0 only.

Signals: SIGTERM or SIGINT is forwarded to every worker as SIGTERM. Each worker drains for
up to ``server.drain_timeout``, and the supervisor waits for them. A second SIGTERM or
SIGINT is forwarded too, and workers then stop at once, as a single process does. SIGHUP is
forwarded as is: each worker reopens its log file and rereads its key file. Workers run in
their own process group, so a Ctrl+C in a terminal reaches the supervisor alone and is
forwarded once. A worker that dies for any other reason is restarted. If it dies within
``MIN_UPTIME_S`` of its start, the restart waits, doubling from ``FIRST_BACKOFF_S`` up to
``MAX_BACKOFF_S``, so a crash loop does not spin. A worker that exits with status 2 (a
configuration error, such as a port it cannot listen on) stops the whole supervisor with
status 2: a restart would fail the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from functools import partial
from typing import Any, NoReturn

from clawproxy.config import Config, ConfigError
from clawproxy.gateway import Gateway
from clawproxy.http.listener import ListenError
from clawproxy.process.runner import listen_failure, report, run, serve
from clawproxy.process.signals import Reread

log = logging.getLogger("clawproxy.workers")

# Exit statuses, as runner.py uses them.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# A worker that lives shorter than this is crashing at start: restart it after a backoff.
MIN_UPTIME_S = 5.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
# After forwarding a stop, workers get drain_timeout plus this much before SIGKILL.
STOP_GRACE_S = 5.0
# The supervisor wakes at least this often to reap children even if a SIGCHLD was lost.
POLL_S = 1.0
# The name of a port's supervisor lock in the abstract Unix socket namespace, plus the port.
LOCK_PREFIX = "clawproxy-port-"
# prctl(2) option: a signal for this process when its parent dies.
PR_SET_PDEATHSIG = 1

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_WATCHED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
# What pthread_sigmask returns: the mask a forked worker restores.
_SigSet = set[int | signal.Signals]


def share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of ``total``: the floor share, plus one for the first
    ``total % workers`` workers. The parts of all workers add up to ``total``."""
    return total // workers + (1 if index < total % workers else 0)


def check_workers(config: Config, workers: int) -> None:
    """Raise ``ConfigError`` when ``workers`` cannot run with this configuration."""
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    if config.coordination.backend == "redis":
        return  # the slots are shared in Redis, not split
    slots = config.gateway.max_concurrent
    if workers > slots:
        raise ConfigError(
            f"gateway.max_concurrent: {slots} slot(s) cannot be split across {workers} "
            f"workers (each needs at least one); use --workers {slots} or fewer, or raise "
            "gateway.max_concurrent",
            key="gateway.max_concurrent",
        )
    for index, node in enumerate(config.nodes):
        cap = node.max_concurrent
        if cap is not None and workers > cap:
            raise ConfigError(
                f"nodes[{index}].max_concurrent: node '{node.name}' has {cap} slot(s), which "
                f"cannot be split across {workers} workers; use --workers {cap} or fewer",
                key=f"nodes[{index}].max_concurrent",
            )


def worker_config(config: Config, index: int, workers: int, port: int) -> Config:
    """The configuration worker ``index`` runs with: its shares, the shared port, and an
    admin listener of its own unless it is worker 0."""
    gw = config.gateway
    shared = config.coordination.backend == "redis"
    gateway = dataclasses.replace(
        gw,
        # With Redis the workers share the slots there: each may use any free one.
        max_concurrent=gw.max_concurrent if shared else share(gw.max_concurrent, workers, index),
        queue_size=share(gw.queue_size, workers, index),
    )
    # Each node's own cap is split the same way, so the workers together never send a GPU
    # more than its cap (unless Redis keeps the count for all of them).
    nodes = (
        config.nodes
        if shared
        else tuple(
            node
            if node.max_concurrent is None
            else dataclasses.replace(
                node, max_concurrent=share(node.max_concurrent, workers, index)
            )
            for node in config.nodes
        )
    )
    gpu = config.gpu
    alerts = config.alerts
    if index != 0:
        gateway = dataclasses.replace(gateway, debug_host="127.0.0.1", debug_port=0)
        # One sampler per host is enough, and N would send N webhooks per alert; a node's
        # ejection is seen by every worker, and worker 0 tells it.
        gpu = dataclasses.replace(gpu, enabled=False)
        events = dataclasses.replace(alerts.events, node_ejected=False, node_back=False)
        alerts = dataclasses.replace(alerts, events=events)
    server = dataclasses.replace(config.server, port=port)
    return dataclasses.replace(
        config, gateway=gateway, server=server, gpu=gpu, nodes=nodes, alerts=alerts
    )


def reread_share(reread: Reread, index: int, workers: int, port: int) -> Config:
    """SIGHUP in a worker: the file reread, checked for the split, and this worker's share."""
    config = reread()
    check_workers(config, workers)
    return worker_config(config, index, workers, port)


def _addresses(host: str, port: int) -> list[tuple[int, int, int, tuple[Any, ...]]]:
    """Every address ``host`` resolves to for listening, once each, as asyncio's
    ``create_server`` binds them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    found: dict[tuple[int, object], tuple[int, int, int, tuple[Any, ...]]] = {}
    for family, kind, proto, _, address in infos:
        found.setdefault((family, address[0]), (family, kind, proto, address))
    return list(found.values())


def _bind_all(host: str, port: int, *, reuse_port: bool) -> tuple[list[socket.socket], int]:
    """Bind (never listen) a socket on every address of ``host``; return them and the port
    (port 0 becomes the port of the first address; the others must match it)."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in _addresses(host, port):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets, port


def lock_port(port: int) -> socket.socket:
    """Take ``port``'s supervisor lock (see the module doc); ``EADDRINUSE`` when another
    supervisor holds it. The lock lasts as long as the returned socket is open."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        lock.bind(f"\0{LOCK_PREFIX}{port}")
    except OSError:
        lock.close()
        raise
    return lock


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Make the port ours alone: the lock (kept with the sockets), a bind without
    ``SO_REUSEPORT`` that fails if anything holds the port already, then the reservation
    that the workers join. Returns the sockets to keep open and the port."""
    lock = lock_port(port) if port else None
    try:
        if port:
            # Nothing may be on the port yet; closed at once, so the reservation can bind.
            probe, _ = _bind_all(host, port, reuse_port=False)
            for sock in probe:
                sock.close()
        sockets, port = _bind_all(host, port, reuse_port=True)
    except OSError:
        if lock is not None:
            lock.close()
        raise
    if lock is None:
        try:
            lock = lock_port(port)  # a fresh free port: no one else can hold its lock
        except OSError:
            for sock in sockets:
                sock.close()
            raise
    return [lock, *sockets], port


@dataclasses.dataclass(slots=True)
class _Slot:
    """What the supervisor knows about worker ``index``."""

    index: int
    pid: int = 0
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Forks the workers, restarts the dead ones and forwards signals; see the module doc."""

    def __init__(self, config: Config, workers: int, reread: Reread | None = None) -> None:
        self.config = config
        # How a worker rereads the file on SIGHUP (its nodes: list), before taking its share.
        self.reread = reread
        self.slots = [_Slot(i) for i in range(workers)]
        self.port = 0
        # The port's lock and reservation (module doc); workers close their copies.
        self._reserved: list[socket.socket] = []
        self._stopping = False
        self._status = EXIT_OK

    def run(self) -> int:
        """Supervise until the workers are gone; return the exit status."""
        cfg = self.config.server
        try:
            self._reserved, self.port = reserve_port(cfg.host, cfg.port)
        except OSError as exc:
            report(listen_failure(ListenError("server.port", cfg.host, cfg.port, exc)))
            return EXIT_CONFIG
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        try:
            for slot in self.slots:
                self._spawn(slot, old_mask)
            log.info(
                "supervisor %d: %d workers on %s:%d",
                os.getpid(),
                len(self.slots),
                cfg.host,
                self.port,
            )
            self._loop(old_mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            for sock in self._reserved:
                sock.close()
        return self._status

    def _loop(self, old_mask: _SigSet) -> None:
        deadline: float | None = None
        while self._stopping is False or any(slot.pid for slot in self.slots):
            now = time.monotonic()
            wait = POLL_S
            for slot in self.slots:
                if slot.restart_at is not None:
                    wait = min(wait, max(0.0, slot.restart_at - now))
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            info = signal.sigtimedwait(_WATCHED, wait)
            if info is not None:
                signum = info.si_signo
                if signum in _STOP_SIGNALS:
                    if not self._stopping:
                        self._stopping = True
                        drain = self.config.server.drain_timeout
                        deadline = time.monotonic() + drain + STOP_GRACE_S
                        log.info("supervisor: stopping; workers drain for up to %gs", drain)
                    self._signal_all(signal.SIGTERM)
                elif signum == signal.SIGHUP:
                    self._signal_all(signal.SIGHUP)
            self._reap()
            now = time.monotonic()
            if self._stopping:
                if deadline is not None and now >= deadline:
                    log.error("supervisor: workers still running after the drain; killing them")
                    self._signal_all(signal.SIGKILL)
                    self._status = EXIT_FAILED
                    deadline = None
                continue
            for slot in self.slots:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot, old_mask)

    def _spawn(self, slot: _Slot, old_mask: _SigSet) -> None:
        slot.restart_at = None
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _worker_main(self, slot.index, parent, old_mask)
        slot.pid = pid
        slot.started = time.monotonic()
        log.debug("supervisor: worker %d is pid %d", slot.index, pid)

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid:
                # One that is already dead is collected by _reap().
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            self._worker_exited(slot, pid, status)

    def _worker_exited(self, slot: _Slot, pid: int, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        if self._stopping:
            # Killed by our SIGTERM before it installed its handlers (still starting): that
            # is a clean stop too.
            if code not in (EXIT_OK, -signal.SIGTERM):
                self._status = EXIT_FAILED
            return
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if code == EXIT_CONFIG:
            # A port it cannot listen on or a bad key file: a restart would fail the same way.
            log.error("supervisor: worker %d %s; stopping all workers", slot.index, how)
            self._status = EXIT_CONFIG
            self._stopping = True
            self._signal_all(signal.SIGTERM)
            return
        uptime = time.monotonic() - slot.started
        delay = 0.0
        if uptime < MIN_UPTIME_S:
            delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**slot.failures)
            slot.failures += 1
        else:
            slot.failures = 0
        log.warning(
            "supervisor: worker %d (pid %d) %s after %.1fs; restarting in %.1fs",
            slot.index,
            pid,
            how,
            uptime,
            delay,
        )
        slot.restart_at = time.monotonic() + delay


def _worker_main(sup: Supervisor, index: int, parent: int, old_mask: _SigSet) -> NoReturn:
    """The forked child: become worker ``index`` and never return into the supervisor."""
    code = EXIT_FAILED
    try:
        # The lock is the supervisor's: a worker left draining after a SIGKILLed supervisor
        # must not keep a restarted one from taking the port.
        for sock in sup._reserved:
            sock.close()
        # Own process group: a terminal's Ctrl+C reaches the supervisor only, once.
        os.setpgid(0, 0)
        _die_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        workers, port = len(sup.slots), sup.port
        config = worker_config(sup.config, index, workers, port)

        def make_gateway(cfg: Config) -> Gateway:
            return Gateway(cfg, reuse_port=True)

        reread = sup.reread
        share_of = None if reread is None else partial(reread_share, reread, index, workers, port)
        run(serve(config, make_gateway=make_gateway, reread=share_of))
        code = EXIT_OK
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        for handler in logging.getLogger("clawproxy").handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Ask Linux for a SIGTERM when the supervisor dies (SIGKILL included): no orphans."""
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        # The supervisor died before prctl took effect.
        os._exit(EXIT_FAILED)


def supervise(
    config: Config, workers: int, *, demo: bool = False, reread: Reread | None = None
) -> int:
    """Run ``workers`` gateway processes on one port; return the exit status.

    A configuration that cannot be split prints one line and returns 2, as cli.py does.
    """
    try:
        if demo:
            raise ConfigError("--demo runs one process with its simulator; drop --workers")
        check_workers(config, workers)
    except ConfigError as exc:
        print(f"clawproxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return Supervisor(config, workers, reread).run()
