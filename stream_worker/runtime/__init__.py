"""The Faust runtime: app wiring, the scoring loop, sending, acks, views, the worker process."""
