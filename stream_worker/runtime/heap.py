"""The garbage collector's pauses off the hot path: freeze what start-up left alive.

A worker that has imported Faust, MLflow, XGBoost and pandas and loaded its model holds
about 400k long-lived objects (396k frozen in a benchmark worker; 243k after the imports
alone); every full collection walks all of them (about 175 ms for the imports' share on this
machine, measured with ``gc.collect(2)``; 21–304 ms seen in workers),
holding the GIL, so the event loop and Faust's consumer thread both stop, and every record
in flight waits. Frozen objects (``gc.freeze``) are left out of every later collection; what
the worker allocates per batch is still collected as before. The price: a cycle among
objects frozen here is never freed (the first model's, after a swap; a few MB at most, once).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_heap() -> int:
    """Collect once, then move every surviving object to the permanent generation; the
    number of objects frozen so far."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "froze %d long-lived objects out of the garbage collector's reach (%.0f ms)",
        frozen,
        (time.perf_counter() - started) * 1000.0,
    )
    return frozen
