"""Stopping background tasks for sure, within a deadline.

Why not one ``task.cancel()`` and an ``await task``: a cancel that lands while a timeout
inside the task is expiring can be lost (the timeout claims the cancellation and turns it
into its own ``TimeoutError``: CPython gh-86296, async-timeout #229; redis-py's reads time
out the same way). The task then carries on to its next ``sleep`` as if nothing happened,
and the unbounded ``await task`` of a shutdown waits forever. Cancelling again on each short
turn until the task is done stops it at its next await; the deadline bounds the rest.
A task's own clean-up on its way out is cancelled again too if it awaits past a turn: keep
such clean-up synchronous, or shielded (as redis-py's ``PubSub.aclose`` is).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# How often a cancel is repeated for a task that has not ended yet.
RECANCEL_S = 0.05
# Long enough for any clean-up a background task does on its way out (closing a socket).
STOP_DEADLINE_S = 5.0


async def stop_tasks(
    tasks: Iterable[asyncio.Task[Any]], deadline_s: float = STOP_DEADLINE_S
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` until each has ended, for at most ``deadline_s``.

    Returns the tasks still running at the deadline (logged: they are a bug to find, not a
    reason to hang a shutdown). Their outcomes are retrieved, so nothing is reported as
    never retrieved later.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
    for task in every:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("background task %s ended with %r", task.get_name(), task.exception())
    for task in pending:
        log.warning("background task %s did not stop within %.1fs", task.get_name(), deadline_s)
    return pending


async def stop_task(task: asyncio.Task[Any] | None, deadline_s: float = STOP_DEADLINE_S) -> None:
    """``stop_tasks`` for one task, or none."""
    if task is not None:
        await stop_tasks((task,), deadline_s)
