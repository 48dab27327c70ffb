"""Live model performance: join predictions with outcomes from the capture, per version.

``performance`` (numpy maths) → ``live`` (per-version windows from the capture, DuckDB) →
``exporter`` (Prometheus metrics and the HTTP views) → ``service`` (the ``stream-worker monitor``
process: recompute every interval).
"""
