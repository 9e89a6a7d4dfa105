"""The daemon's periodic duties (daemon/duties.py): how a duty is repeated."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from helpdesk.daemon.duties import repeat


def test_a_duty_runs_at_once_goes_on_after_a_failing_pass_and_ends_on_stop() -> None:
    """The timers' way: a pass at once, a failure logged and the next pass run all the same."""
    calls: list[int] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def duty() -> None:  # runs in a thread
            calls.append(len(calls))
            if len(calls) == 1:
                raise RuntimeError("database away")
            if len(calls) == 3:
                loop.call_soon_threadsafe(stop.set)

        await asyncio.wait_for(repeat(duty, 0, stop, at_once=True, failed="timers.pass_failed"),
                               timeout=30)

    with capture_logs() as logs:
        asyncio.run(main())
    assert calls == [0, 1, 2]
    failures = [e for e in logs if e["event"] == "timers.pass_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"


def test_a_duty_that_waits_first_does_not_run_before_its_period() -> None:
    """The heartbeat's way: the daemon beat once before it started, the next beat is a period
    later; a stop before then ends the duty without a pass."""
    calls: list[int] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(repeat(lambda: calls.append(1), 3600, stop, at_once=False,
                                          failed="daemon.heartbeat_failed"))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(main())
    assert calls == []
