"""py-spy on one worker during a phase (``--profile``); py-spy is a dev-only tool."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from stream_worker.devtools.bench.context import BenchRun
from stream_worker.devtools.extras import py_spy
from stream_worker.devtools.processes import ManagedProcess

#: Output format by file suffix; anything else is py-spy's raw text.
FORMATS = {".svg": "flamegraph", ".json": "speedscope"}


@contextlib.contextmanager
def profiling(run: BenchRun, target: ManagedProcess, out: Path | None) -> Iterator[None]:
    """Sample ``target`` with py-spy into ``out`` while the block runs (nothing when None)."""
    if out is None:
        yield
        return
    spy = _start(run, target, out)
    try:
        yield
    finally:
        _stop(spy)


def _start(run: BenchRun, target: ManagedProcess, out: Path) -> ManagedProcess:
    """py-spy on the worker (sampling, non-blocking); the format follows the file suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        py_spy(), "record",
        "--pid", str(target.pid),
        "--output", str(out.resolve()),
        "--format", FORMATS.get(out.suffix, "raw"),
        "--rate", "100",
        "--nonblocking",
    ]  # fmt: skip
    spy = run.launch(ManagedProcess("py-spy", argv, None, run.logs / "py-spy.log"))
    time.sleep(1.0)  # attaching takes a moment
    return spy


def _stop(spy: ManagedProcess) -> None:
    """SIGINT makes py-spy write its output and exit."""
    if spy.process is not None and spy.running:
        spy.process.send_signal(signal.SIGINT)
        with contextlib.suppress(Exception):
            spy.process.wait(timeout=60)
    spy.stop()
