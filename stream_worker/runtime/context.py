"""What the scoring loop, the timers and the views share: one object, passed down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import faust

from stream_worker.model_watcher import ModelWatcher
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import BatchScorer
from stream_worker.settings import WorkerSettings


@dataclass
class WorkerContext:
    """The parts of one worker: its settings, Faust app, metrics, model and batch scorer."""

    settings: WorkerSettings
    app: faust.App
    metrics: ScorerMetrics
    watcher: ModelWatcher
    batch_scorer: BatchScorer
    _model_ready: asyncio.Event | None = None

    def model_ready(self) -> asyncio.Event:
        """Set once a model serves (created lazily: it must belong to the running loop)."""
        if self._model_ready is None:
            self._model_ready = asyncio.Event()
            if self.watcher.ready:
                self._model_ready.set()
        return self._model_ready
