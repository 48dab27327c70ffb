"""``stream-worker bench``: throughput, latency and baselines on loopback, in one run."""
