"""GroupCommit's awaited writes: woken at durability, withdrawn when the store stalls."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.errors import StoreUnavailable
from service.stores.group import GroupCommit, Write


def _stalling(release: threading.Event, ran: list[int]) -> GroupCommit[None]:
    def runner(batch: list[Write[None]]) -> None:
        release.wait(10)  # a stalled fsync: the batch holds on until the test releases it
        for w in batch:
            w.result = w.fn(None)
            ran.append(w.result)

    return GroupCommit(runner, timeout_s=0.2)


def test_awaited_write_queued_behind_a_stalled_batch_is_withdrawn() -> None:
    release, ran = threading.Event(), []
    group = _stalling(release, ran)

    async def scenario() -> None:
        first = group.enqueue(lambda _: 1)
        running = asyncio.ensure_future(group.wait_async(first))
        await asyncio.sleep(0.05)  # the first batch is running (stalled) in the helper thread
        second = group.enqueue(lambda _: 2)
        with pytest.raises(StoreUnavailable, match=r"longer than 0\.2 s"):
            await group.wait_async(second)
        release.set()
        assert await running == 1  # in the running batch past the timeout: still answered

    asyncio.run(scenario())
    assert ran == [1]  # the withdrawn write never ran
    group.close()


def test_awaited_writes_share_a_batch_and_get_their_own_results() -> None:
    release, ran = threading.Event(), []
    release.set()
    group = _stalling(release, ran)

    async def scenario() -> list[int]:
        writes = [group.enqueue(lambda _, i=i: i) for i in range(5)]
        return list(await asyncio.gather(*(group.wait_async(w) for w in writes)))

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]
    assert group.batches == 1 and group.writes == 5
    group.close()
