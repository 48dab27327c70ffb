"""``stream-worker bench``: throughput, latency and baselines on loopback, in one run.

- :mod:`.runner`: ``run_bench``, the order of the steps and the JSON they fill;
- :mod:`.context`: ``BenchOptions`` and ``BenchRun`` (broker, topics, processes of a run);
- :mod:`.phases`: the phases that run worker processes (throughput, pass-through, latency);
- :mod:`.baselines`: in-process figures (naive one-record scorer, cost share of ``process``);
- :mod:`.report`: derived figures, targets, the printed table and the JSON file;
- :mod:`.sysinfo`: CPU use, peak RSS and the machine; :mod:`.profiler`: py-spy on a worker.
"""
