"""API service parts that need no engine: admission order and limits, settings."""

import asyncio

import pytest

from ktappliance.api.admission import Admission, ClientGone, QueueFull, WaitTooLong
from ktappliance.api.config import from_env
from ktappliance.errors import ApplianceError


def test_fifo_one_at_a_time():
    async def scenario():
        admission = Admission(max_inflight=1, queue_size=10, queue_timeout=5)
        order, active = [], []

        async def client(n):
            async with admission.slot():
                active.append(n)
                assert len(active) == 1
                order.append(n)
                await asyncio.sleep(0.01)
                active.remove(n)

        tasks = []
        for n in range(8):
            tasks.append(asyncio.create_task(client(n)))
            await asyncio.sleep(0)  # arrive in order
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == list(range(8))


def test_a_batch_engine_gets_its_batch_at_once_and_the_rest_queue_in_order():
    # A balance_serve engine with max_batch_size 4: four in flight, the rest
    # wait their turn in arrival order, and the counts say so.
    async def scenario():
        admission = Admission(max_inflight=4, queue_size=10, queue_timeout=5)
        release = asyncio.Event()
        started, peak = [], []

        async def client(n):
            async with admission.slot():
                started.append(n)
                peak.append(admission.inflight)
                await release.wait()

        tasks = []
        for n in range(7):
            tasks.append(asyncio.create_task(client(n)))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        counts = (admission.inflight, admission.waiting, list(started))
        release.set()
        await asyncio.gather(*tasks)
        return counts, started, max(peak)

    counts, started, peak = asyncio.run(scenario())
    assert counts == (4, 3, [0, 1, 2, 3])
    assert started == list(range(7)) and peak == 4


def test_retry_after_follows_what_the_queue_will_take():
    async def scenario():
        admission = Admission(max_inflight=2, queue_size=4, queue_timeout=5)
        hints = [admission.retry_after()]           # nothing measured: the first guess
        for _ in range(3):
            async with admission.slot():
                await asyncio.sleep(0.2)
        hints.append(admission.retry_after())        # empty queue, 0.2 s a request
        admission.seconds_per_request = 20.0         # R1-like requests
        admission.waiting = 3
        hints.append(admission.retry_after())        # 4 ahead of a newcomer, 2 at a time: 40 s
        admission.waiting = 40
        hints.append(admission.retry_after())        # capped where clients still honour it
        return hints

    assert asyncio.run(scenario()) == [3, 1, 40, 60]


async def occupy(admission: Admission, release: asyncio.Event) -> asyncio.Task:
    """Take the one engine slot until `release` is set."""
    async def holder():
        async with admission.slot():
            await release.wait()
    task = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    return task


def test_full_queue_and_wait_limit():
    async def scenario():
        admission = Admission(max_inflight=1, queue_size=2, queue_timeout=0.2)
        hold = asyncio.Event()

        async def waiter():
            async with admission.slot():
                pass

        first = await occupy(admission, hold)
        waiting = [asyncio.create_task(waiter()) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            async with admission.slot():
                pass
        results = await asyncio.gather(*waiting, return_exceptions=True)
        hold.set()
        await first
        return results, admission

    results, admission = asyncio.run(scenario())
    assert all(isinstance(r, WaitTooLong) for r in results)
    assert (admission.waiting, admission.inflight) == (0, 0)


def test_client_that_leaves_the_queue_frees_its_place():
    async def scenario():
        admission = Admission(max_inflight=1, queue_size=1, queue_timeout=5)
        hold = asyncio.Event()
        first = await occupy(admission, hold)
        gone = asyncio.Event()
        leaving = asyncio.create_task(admission.slot(gone.wait()).__aenter__())
        await asyncio.sleep(0.01)
        assert admission.waiting == 1
        gone.set()
        with pytest.raises(ClientGone):
            await leaving
        assert admission.waiting == 0
        hold.set()
        await first
        async with admission.slot():  # the slot was not leaked
            return admission.inflight

    assert asyncio.run(scenario()) == 1


@pytest.mark.parametrize("env, fragment", [
    ({}, "KTA_UPSTREAM"),
    ({"KTA_UPSTREAM": "http://engine:8080"}, "no API key configured"),
    ({"KTA_UPSTREAM": "http://e:1", "KTA_API_KEYS": "k", "KTA_MAX_INFLIGHT": "0"}, "KTA_MAX_INFLIGHT=0"),
    ({"KTA_UPSTREAM": "http://e:1", "KTA_API_KEYS": "k", "KTA_QUEUE_SIZE": "many"}, "KTA_QUEUE_SIZE"),
    ({"KTA_UPSTREAM": "http://e:1", "KTA_API_KEY_FILE": "/nonexistent/keys"}, "KTA_API_KEY_FILE"),
    ({"KTA_UPSTREAM": "http://e:1", "KTA_OPEN": "true", "KTA_MODEL_ALIASES": "x=loud"}, "inline or split"),
])
def test_bad_settings(env, fragment):
    with pytest.raises(ApplianceError, match=fragment):
        from_env(env)


def test_settings_from_key_file_and_aliases(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# generated\nkey-one\nkey-two\n")
    config = from_env({"KTA_UPSTREAM": "http://engine:8080/v1", "KTA_API_KEY_FILE": str(keys),
                       "KTA_MODEL_ALIASES": "DeepSeek-R1,deepseek-reasoner=split"})
    assert config.upstream == "http://engine:8080"
    assert config.api_keys == {"key-one", "key-two"}
    assert config.aliases == {"DeepSeek-R1": "inline", "deepseek-reasoner": "split"}
