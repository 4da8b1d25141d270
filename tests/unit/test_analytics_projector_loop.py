"""The background projector's loop: a stop or a noted tenant that arrives while a round works is not lost
(a stop once waited for the next sweep, holding a server's shutdown for the whole close timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from state_manager.analytics import projector as projector_module
from state_manager.analytics.projector import AnalyticsProjector


class Recording(AnalyticsProjector):
    """The real loop; the database work replaced by recording which tenants each round was given."""

    def __init__(self) -> None:
        super().__init__(db=None, sweep_seconds=3600)  # type: ignore[arg-type]
        self.rounds: list[list[str]] = []
        self.during_work: Any = None

    async def _behind(self) -> list[str]:
        return []

    async def _work_on(self, tenant_ids: Iterable[str]) -> None:
        self.rounds.append(list(tenant_ids))
        if self.during_work is not None:
            action, self.during_work = self.during_work, None
            await action()


async def test_a_stop_during_a_round_ends_the_loop_without_a_cancel() -> None:
    projector = Recording()
    stopped: list[asyncio.Task[None]] = []

    async def stop() -> None:
        stopped.append(asyncio.create_task(projector.close()))
        await asyncio.sleep(0)  # close() sets its events now, while this round is still working

    projector.during_work = stop
    projector.start()
    await asyncio.wait_for(asyncio.shield(projector._task), 2)  # type: ignore[arg-type]
    await stopped[0]
    assert projector._task is not None
    assert not projector._task.cancelled()


async def test_a_tenant_noted_during_a_round_is_worked_on_in_the_next_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(projector_module, "ROUND_SECONDS", 0.05)  # rounds are 2 s apart in service
    projector = Recording()

    async def note() -> None:
        await projector.numbered(None, "t-late", [])  # type: ignore[arg-type]

    projector.during_work = note
    projector.start()
    try:
        for _ in range(200):
            if ["t-late"] in projector.rounds:
                break
            await asyncio.sleep(0.01)
        assert ["t-late"] in projector.rounds, projector.rounds
    finally:
        await projector.close()
