"""The worker's tuning constants, in one place, each with the reason for its value.

These trade latency against per-batch overhead on the hot path. They are constants, not
settings, because no deployment has needed to change them; docs/benchmark.md has the figures
that chose them.
"""

from __future__ import annotations

#: aiokafka fetch wait. Faust hard-codes 1.5 s; a broker that does not answer a fetch as soon
#: as data arrives (Tansu) then holds records that long at low rates.
FETCH_MAX_WAIT_MS = 10

#: Freeze the heap once the first model is loaded (:mod:`stream_worker.runtime.heap`): full
#: garbage collections then skip start-up's ~400k objects (175–300 ms each).
GC_FREEZE_WHEN_READY = True

#: How often the batch window looks at the queue again while it waits to fill a batch.
BATCH_POLL_SECONDS = 0.002

#: Records the consumer may fetch and buffer ahead of scoring (at least two full batches).
MIN_STREAM_BUFFER = 4096

#: Batches whose deliveries may still be unacknowledged while the next one is scored.
MAX_UNACKED_BATCHES = 1

#: How long a revocation or a stop waits for pending batches to be acknowledged before it
#: abandons them (unacked, so redone). A healthy broker acknowledges a batch in milliseconds;
#: one that takes seconds is in trouble, and a longer wait holds up the whole group's rebalance.
DRAIN_TIMEOUT_SECONDS = 5.0

#: How often offsets that became committable are committed.
COMMIT_INTERVAL_SECONDS = 1.0

#: Producer: wait this long for more records before sending a request.
PRODUCER_LINGER_MS = 1

#: Producer: the size of one record batch (one per output partition and micro-batch).
PRODUCER_MAX_BATCH_BYTES = 512 * 1024

#: Producer: the largest request; above Kafka's 1 MB default so large dead letters fit.
PRODUCER_MAX_REQUEST_BYTES = 2_000_000

#: Seconds between consumer-lag exports.
LAG_INTERVAL_SECONDS = 5.0

#: Longest wait between attempts to load the first model.
MAX_BACKOFF_SECONDS = 30.0
