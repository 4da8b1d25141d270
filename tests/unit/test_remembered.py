"""The Authenticator's memory of keys and tenants: bounded by its TTL, one load at a time, refreshed
before it expires, and a clear() (a revocation) is never undone by a load that began before it."""

from __future__ import annotations

import asyncio

from state_manager.tenants.auth import REFRESH_SHARE, _Remembered


class Loads:
    def __init__(self) -> None:
        self.count = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> int:
        self.count += 1
        await self.gate.wait()
        return self.count


async def test_concurrent_requests_share_one_load() -> None:
    remembered: _Remembered[int] = _Remembered(ttl=60)
    loads = Loads()
    loads.gate.clear()
    waiting = [asyncio.ensure_future(remembered.get("k", loads)) for _ in range(20)]
    await asyncio.sleep(0)
    loads.gate.set()
    assert await asyncio.gather(*waiting) == [1] * 20
    assert await remembered.get("k", loads) == 1
    assert loads.count == 1


async def test_a_key_in_use_is_refreshed_in_the_background_before_it_expires() -> None:
    ttl = 0.5
    remembered: _Remembered[int] = _Remembered(ttl=ttl)
    loads = Loads()
    assert await remembered.get("k", loads) == 1
    await asyncio.sleep(ttl * (1 - REFRESH_SHARE) + 0.05)
    assert await remembered.get("k", loads) == 1  # answered at once, and a refresh started
    await asyncio.sleep(0.05)
    assert loads.count == 2
    await asyncio.sleep(ttl * REFRESH_SHARE)  # past the first answer's expiry
    assert await remembered.get("k", loads) == 2
    assert loads.count == 2


async def test_a_load_that_began_before_clear_is_not_kept() -> None:
    remembered: _Remembered[int] = _Remembered(ttl=60)
    loads = Loads()
    loads.gate.clear()
    before = asyncio.ensure_future(remembered.get("k", loads))
    await asyncio.sleep(0)
    remembered.clear()  # say, the key was revoked meanwhile
    loads.gate.set()
    assert await before == 1
    assert await remembered.get("k", loads) == 2


async def test_without_a_ttl_every_call_loads() -> None:
    remembered: _Remembered[int] = _Remembered(ttl=0)
    loads = Loads()
    assert [await remembered.get("k", loads) for _ in range(3)] == [1, 2, 3]
