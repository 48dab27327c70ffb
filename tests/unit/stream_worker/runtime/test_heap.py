"""Freezing the heap once the worker is ready: start-up's objects leave the collector's walk."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stream_worker.runtime.heap import freeze_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite runs with an ordinary collector


def test_freeze_moves_survivors_out_of_every_generation(unfrozen: None) -> None:
    survivor = [object() for _ in range(1000)]
    frozen = freeze_heap()
    assert frozen == gc.get_freeze_count() >= len(survivor)
    after = [object() for _ in range(10)]
    assert gc.get_freeze_count() == frozen  # later objects are collected as before
    del survivor, after


def test_cyclic_garbage_made_after_the_freeze_is_still_collected(unfrozen: None) -> None:
    freeze_heap()

    class Node:
        def __init__(self) -> None:
            self.peer: Node | None = None

    a, b = Node(), Node()
    a.peer, b.peer = b, a
    alive = weakref.ref(a)
    del a, b
    gc.collect()
    assert alive() is None  # the cycle was found and freed
