"""Test-side handles for the capture: ``stream-worker capture`` processes on a worker stack's
topics, what they archived, their metrics (used by the capture tests' fixture)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from stack_helpers import WorkerStack

from stream_worker.capture.store import CaptureCounts, CaptureReader
from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import ManagedProcess, capture_process

T = TypeVar("T")


@dataclass
class CaptureStack:
    stack: WorkerStack
    folder: Path
    captures: list[ManagedProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    @property
    def uri(self) -> str:
        return self.env["SCORER_CAPTURE_URI"]

    @property
    def outcomes_topic(self) -> str:
        return self.env["SCORER_OUTCOMES_TOPIC"]

    @property
    def outcomes_dlq_topic(self) -> str:
        return self.env["SCORER_OUTCOMES_DLQ_TOPIC"]

    def start_capture(self, timeout: float = 60.0, *, wait: bool = True) -> ManagedProcess:
        """``stream-worker capture``; ready once it has joined its group (/health 200).

        ``wait=False`` returns at once (start a worker meanwhile, then ``wait_ready``).
        """
        proc = capture_process(
            self.env, free_port(), self.folder / f"capture-{len(self.captures)}.log"
        )
        ready_url, proc.ready_url = proc.ready_url, (proc.ready_url if wait else None)
        self.captures.append(proc)
        proc.start(timeout=timeout)
        proc.ready_url = ready_url
        return proc

    def counts(self) -> tuple[Any, CaptureCounts]:
        """A DuckDB connection on the capture and what it found."""
        return CaptureReader.from_uri(self.uri).connect()


def metric(proc: ManagedProcess, name: str, labels: str = "") -> float:
    """One sample of the process's /metrics (0 if the process does not answer)."""
    assert proc.ready_url is not None
    try:
        with urllib.request.urlopen(proc.ready_url.replace("/health", "/metrics"), timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" ([0-9.e+]+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """Call ``probe`` until ``done(value)`` or ``timeout``; the last value either way."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = probe()
    return value
