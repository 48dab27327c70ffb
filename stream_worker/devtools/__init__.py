"""Developer tooling: the embedded broker, local processes, replay, the demo and the benchmark."""
