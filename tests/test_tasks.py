"""Background tasks stop within a deadline, even one that loses a cancel.

The case that hung a shutdown: a cancel lost to a timeout inside the task (the task goes on
to its next sleep as if never cancelled). Here a task swallows its first cancels on purpose.
"""

from __future__ import annotations

import asyncio

from harness import Runner

from clawproxy.tasks import stop_task, stop_tasks


def test_a_task_that_loses_its_first_cancels_is_stopped(run: Runner) -> None:
    async def main() -> None:
        lost: list[int] = []

        async def stubborn() -> None:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if len(lost) == 2:
                        raise
                    lost.append(1)  # what a lost cancel looks like: the loop goes on

        task = asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        assert await stop_tasks({task}) == set()
        assert task.cancelled() and len(lost) == 2

    run(main())


def test_a_task_that_never_stops_is_given_up_at_the_deadline(run: Runner) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def deaf() -> None:
            while not release.is_set():
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    continue

        task = asyncio.get_running_loop().create_task(deaf())
        await asyncio.sleep(0)
        assert await stop_tasks([task], deadline_s=0.2) == {task}
        assert not task.done()
        release.set()
        task.cancel()  # let it see the event
        await task
        assert task.done() and not task.cancelled()

    run(main())


def test_tasks_already_done_or_failed_and_none_are_fine(run: Runner) -> None:
    async def main() -> None:
        async def fails() -> None:
            raise ValueError("boom")

        async def ends() -> None:
            return None

        loop = asyncio.get_running_loop()
        failed, ended = loop.create_task(fails()), loop.create_task(ends())
        await asyncio.sleep(0)
        assert failed.done() and ended.done()
        assert await stop_tasks([failed, ended]) == set()
        await stop_task(None)
        assert isinstance(failed.exception(), ValueError)

    run(main())
