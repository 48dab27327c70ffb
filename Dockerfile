# syntax=docker/dockerfile:1
#
# Two images from one file:
#   scorer (default target): the project, with the `trainer` and `stream-worker` commands.
#   mlflow-server: the official MLflow image plus the PostgreSQL driver its backend store needs.
# Base images are pinned to exact tags; pin them to digests as well where the registry is
# reachable (`docker buildx imagetools inspect IMAGE:TAG`).

FROM ghcr.io/mlflow/mlflow:v3.17.2 AS mlflow-server
RUN pip install --no-cache-dir "psycopg2-binary==2.9.10"


FROM python:3.11.13-slim-bookworm AS scorer

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: OpenMP runtime of xgboost's wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid so named volumes keep their owner across image rebuilds.
RUN groupadd --system --gid 10001 scorer \
    && useradd --system --uid 10001 --gid scorer --create-home --home-dir /home/scorer scorer \
    && mkdir -p /var/lib/scorer /var/lib/trainer \
    && chown scorer:scorer /var/lib/scorer /var/lib/trainer

WORKDIR /opt/income-stream-scorer
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY stream_worker ./stream_worker
# The runtime install: trainer and worker, no embedded broker or profilers (extras local, dev).
RUN pip install . \
    && python -c "import trainer, stream_worker"

USER scorer
WORKDIR /var/lib/scorer

# The worker's web server (GET /health, /metrics, POST /predict).
EXPOSE 6066

CMD ["stream-worker", "--help"]
