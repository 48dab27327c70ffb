"""What a phase cost the machine (CPU in cores, peak RSS) and which machine it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from pathlib import Path

from stream_worker.devtools.extras import import_psutil

_VMHWM = re.compile(r"^VmHWM:\s+(\d+) kB", re.MULTILINE)


class CpuMeter:
    """CPU used by some processes between ``start`` and ``stop``, in cores (1.0 = one core).

    Sampled from the first progress to the end of a phase (0.25 s resolution), so it tells
    whether the worker is CPU-bound (close to 1.0: one Python thread is the wall) or waits.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        psutil = import_psutil()
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(Exception):
                times = proc.cpu_times()
                out[name] = float(times.user + times.system)
        return out

    def start(self) -> None:
        self._t0, self._start = time.monotonic(), self._sample()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        if not self._start or wall <= 0:
            return {}
        return cores_used(self._start, self._sample(), wall)


def cores_used(start: dict[str, float], end: dict[str, float], wall: float) -> dict[str, float]:
    """CPU seconds used between two samples, per process, divided by the wall time."""
    return {name: round((end[name] - start[name]) / wall, 2) for name in end if name in start}


def peak_rss_mb(pid: int | None) -> float:
    """VmHWM (peak resident set) of a running process, in MiB; 0.0 when it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return vmhwm_mb(status)


def vmhwm_mb(status: str) -> float:
    """The ``VmHWM`` line of a ``/proc/<pid>/status`` text, in MiB (0.0 when absent)."""
    match = _VMHWM.search(status)
    return round(int(match.group(1)) / 1024.0, 1) if match else 0.0


def cpu_info() -> str:
    """``"<model name>, <n> cores"`` of this machine."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


#: What a worker imports before its first record, in the order measured (cumulative).
IMPORT_STEPS = (
    ("numpy", "import numpy"),
    ("xgboost", "import xgboost"),
    ("faust_aiokafka", "import faust, aiokafka"),
    ("mlflow", "import mlflow"),
    ("worker", "import stream_worker.runtime.worker, stream_worker.model_watcher"),
)

_IMPORT_SCRIPT = """
import json, re, sys
def rss():
    text = open('/proc/self/status').read()
    return int(re.search(r'^VmRSS:\\s+(\\d+) kB', text, re.M).group(1)) / 1024.0
out = [('python', rss())]
for name, stmt in json.loads(sys.argv[1]):
    exec(stmt)
    out.append((name, rss()))
print(json.dumps(out))
"""


def import_rss_mb() -> dict[str, float]:
    """RSS (MiB) each step of a worker's imports adds, in a fresh interpreter, and the total.

    ``python`` is the bare interpreter; each later step what its imports add to the ones
    before (so a library shared by two steps counts in the first).
    """
    import itertools
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-c", _IMPORT_SCRIPT, json.dumps(IMPORT_STEPS)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    shares = {steps[0][0]: round(steps[0][1], 1)}
    for (_, before), (name, after) in itertools.pairwise(steps):
        shares[name] = round(after - before, 1)
    shares["total"] = round(steps[-1][1], 1)
    return shares


def rss_mb(pid: int | None) -> float:
    """VmRSS (current resident set) of a running process, in MiB; 0.0 when it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return round(int(match.group(1)) / 1024.0, 1) if match else 0.0
