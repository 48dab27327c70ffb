"""The first model: the heap is frozen once it is loaded, unless tuning says not to."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from stream_worker.runtime import app, tuning
from stream_worker.runtime.context import WorkerContext


class ReadyWatcher:
    ready = True
    registry_error = None

    def poll(self) -> None:  # pragma: no cover - a ready watcher is never polled
        raise AssertionError("polled")


def _ctx() -> WorkerContext:
    return WorkerContext(
        settings=cast(Any, None),
        app=cast(Any, None),
        metrics=cast(Any, None),
        watcher=cast(Any, ReadyWatcher()),
        batch_scorer=cast(Any, None),
    )


@pytest.mark.parametrize("freeze", [True, False])
def test_the_heap_is_frozen_once_before_the_first_record(
    monkeypatch: pytest.MonkeyPatch, freeze: bool
) -> None:
    calls = SimpleNamespace(n=0)
    ctx = _ctx()

    def fake_freeze() -> int:
        calls.n += 1
        return 0

    monkeypatch.setattr(app, "freeze_heap", fake_freeze)
    monkeypatch.setattr(tuning, "GC_FREEZE_WHEN_READY", freeze)

    async def test() -> None:
        await app.load_first_model(ctx)
        assert ctx.model_ready().is_set()

    asyncio.run(test())
    assert calls.n == (1 if freeze else 0)
