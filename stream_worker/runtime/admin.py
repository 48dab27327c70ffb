"""Broker checks and topic administration with kafka-python (synchronous).

``wait_for_kafka`` blocks until a broker answers; topics are created up front, inspected, deleted.

Topics must exist before anything produces to them: Tansu auto-creates a missing topic with
4 partitions on the first produce, and it cannot add partitions afterwards.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from stream_worker.exceptions import BrokerError, KafkaSecurityError, one_line
from stream_worker.kafka_security import (
    KafkaSecurity,
    check_security,
    kafka_python_kwargs,
    security_failure,
)
from stream_worker.settings import WorkerSettings

__all__ = ["delete_topics", "ensure_topics", "topic_partitions", "wait_for_kafka"]

log = logging.getLogger(__name__)

_NO_ERROR = 0
_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36
_PROBE_CAP_SECONDS = 5.0  # one metadata request waits at most this long


def _error_name(code: int) -> str:
    import kafka.errors

    return str(kafka.errors.for_code(code).__name__)


@contextmanager
def _admin(
    bootstrap: str, timeout: float, action: str, security: KafkaSecurity | None = None
) -> Iterator[Any]:
    """A KafkaAdminClient for one operation; every failure becomes a one-line BrokerError."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = max(int(timeout * 1000), 100)
    check_security(bootstrap, security, timeout=min(timeout, 10.0))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="income-scorer-admin",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            **kafka_python_kwargs(security),
        )
    except (KafkaError, OSError) as exc:
        raise BrokerError(
            f"cannot {action}: Kafka at {bootstrap} is unreachable ({one_line(exc)})"
        ) from exc
    try:
        yield admin
    except (KafkaError, OSError) as exc:
        raise BrokerError(f"cannot {action} on {bootstrap}: {one_line(exc)}") from exc
    finally:
        admin.close()


def _partition_counts(admin: Any, topics: Sequence[str]) -> dict[str, int | str]:
    """Topic -> partition count, or -> the error name when the broker reports one."""
    counts: dict[str, int | str] = {}
    for info in admin.describe_topics(list(topics)):
        code = info.get("error_code", _NO_ERROR)
        counts[info["name"]] = (
            len(info.get("partitions") or []) if code == _NO_ERROR else _error_name(code)
        )
    return counts


def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    timeout: float = 30,
    *,
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Create each missing topic with ``partitions`` partitions; return the names created.

    Topics that already exist are left alone (a different partition count is logged, not
    fixed: Tansu cannot add partitions). The partition count of every topic created here is
    checked against the broker's metadata.

    Raises:
        BrokerError: the broker is unreachable, refuses a topic, or reports another count.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    names = list(dict.fromkeys(topics))  # de-duplicated, order kept
    if not names:
        return []
    timeout_ms = max(int(timeout * 1000), 100)
    with _admin(bootstrap, timeout, f"create topics {', '.join(names)}", security) as admin:
        response = admin.create_topics(
            # replication factor -1: the broker's default, right for one broker or many
            {name: {"num_partitions": partitions, "replication_factor": -1} for name in names},
            timeout_ms=timeout_ms,
            raise_errors=False,
        )
        created, existing = [], []
        for result in response["topics"]:
            name, code = result["name"], result["error_code"]
            if code == _NO_ERROR:
                created.append(name)
            elif code == _TOPIC_ALREADY_EXISTS:
                existing.append(name)
            else:
                detail = result.get("error_message") or ""
                raise BrokerError(
                    f"cannot create topic {name!r} on {bootstrap}: {_error_name(code)}"
                    + (f" ({one_line(detail)})" if detail else "")
                )
        if created:
            admin.wait_for_topics(created, timeout_ms=timeout_ms)
        counts = _partition_counts(admin, created + existing)

    for name in created:
        if counts.get(name) != partitions:
            raise BrokerError(
                f"topic {name!r} on {bootstrap} was created with {counts.get(name)} "
                f"partitions, not the {partitions} asked for"
            )
    for name in existing:
        if counts.get(name) != partitions:
            log.warning(
                "topic %r on %s already exists with %s partitions (wanted %d); left as is",
                name,
                bootstrap,
                counts.get(name),
                partitions,
            )
    if created:
        log.info("created topics %s with %d partitions on %s", created, partitions, bootstrap)
    return created


def delete_topics(
    bootstrap: str,
    topics: Sequence[str],
    timeout: float = 30,
    *,
    missing_ok: bool = True,
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Delete ``topics``; return the names deleted. Missing topics are skipped if ``missing_ok``.

    Raises:
        BrokerError: the broker is unreachable or refuses, or a topic is missing and
            ``missing_ok`` is false.
    """
    names = list(dict.fromkeys(topics))
    if not names:
        return []
    timeout_ms = max(int(timeout * 1000), 100)
    with _admin(bootstrap, timeout, f"delete topics {', '.join(names)}", security) as admin:
        response = admin.delete_topics(names, timeout_ms=timeout_ms, raise_errors=False)
    deleted = []
    for result in response["topics"]:
        name, code = result["name"], result["error_code"]
        if code == _NO_ERROR:
            deleted.append(name)
        elif not (code == _UNKNOWN_TOPIC and missing_ok):
            raise BrokerError(f"cannot delete topic {name!r} on {bootstrap}: {_error_name(code)}")
    return deleted


def topic_partitions(
    bootstrap: str, topic: str, timeout: float = 30, *, security: KafkaSecurity | None = None
) -> int:
    """Number of partitions of ``topic``.

    Raises:
        BrokerError: the broker is unreachable or the topic does not exist.
    """
    with _admin(bootstrap, timeout, f"describe topic {topic}", security) as admin:
        count = _partition_counts(admin, [topic]).get(topic, "missing from the metadata")
    if isinstance(count, str):
        raise BrokerError(f"cannot describe topic {topic!r} on {bootstrap}: {count}")
    return count


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``"h1:9092,[::1]:9093"`` -> ``[("h1", 9092), ("::1", 9093)]``; port 9092 if omitted."""
    addresses = []
    for raw in bootstrap.split(","):
        entry = raw.strip()
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or "]" in port:  # no port given (a bare host or a bracketed IPv6 address)
            host, port = entry, "9092"
        try:
            addresses.append((host.strip("[]"), int(port)))
        except ValueError:
            raise BrokerError(f"malformed Kafka bootstrap address {entry!r}") from None
    if not addresses:
        raise BrokerError(f"no Kafka bootstrap address in {bootstrap!r}")
    return addresses


def _probe(bootstrap: str, budget: float, security: KafkaSecurity | None = None) -> None:
    """One attempt: a TCP connect, then a Kafka Metadata request. Raises on failure."""
    budget = max(budget, 0.05)
    errors = []
    for host, port in _split_bootstrap(bootstrap):
        try:
            # A cheap check first: kafka-python logs loudly on every refused connection.
            with socket.create_connection((host, port), timeout=min(budget, 0.5)):
                break
        except OSError as exc:
            errors.append(f"{host}:{port} {one_line(exc)}")
    else:
        raise ConnectionError("; ".join(errors))

    check_security(bootstrap, security, timeout=min(budget, _PROBE_CAP_SECONDS))
    from kafka import KafkaAdminClient  # deferred: importing kafka-python is not free

    timeout_ms = int(min(budget, _PROBE_CAP_SECONDS) * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="income-scorer-probe",
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=max(timeout_ms, 100),
        **kafka_python_kwargs(security),
    )
    try:
        admin.list_topics()
    finally:
        admin.close()


def wait_for_kafka(
    bootstrap: str,
    timeout: float,
    *,
    abort: Callable[[], str | None] | None = None,
    security: KafkaSecurity | None = None,
) -> None:
    """Block until a Kafka broker at ``bootstrap`` answers a metadata request.

    ``abort`` is asked between attempts; a non-None answer is raised as the error at once
    (``LocalBroker`` uses it to stop waiting for a broker process that has died). A refused
    credential, an untrusted certificate or a mechanism the broker does not offer is not
    retried: waiting does not fix it, and a retry storm would only lock the account.

    Raises:
        BrokerError: on timeout (naming the last error seen) or when ``abort`` says so.
        KafkaSecurityError: the broker refused the security settings.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt was made"
    while True:
        if abort is not None and (reason := abort()) is not None:
            raise BrokerError(reason)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"Kafka at {bootstrap} did not answer within {timeout:g}s "
                f"(last error: {last_error})"
            )
        try:
            _probe(bootstrap, remaining, security)
        except Exception as exc:  # any failure means "not yet"; the last one is reported
            if (refused := security_failure(exc, bootstrap, security)) is not None:
                raise refused from None
            last_error = one_line(exc)
        else:
            return
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))


#: How long a starting process waits for the broker before giving up with one line.
BROKER_WAIT_SECONDS = 30.0


def prepare_topics(settings: WorkerSettings) -> list[str]:
    """Wait for the broker, then create every topic of the system (the configured partition
    count) that is missing; the names created. Used by every process that starts."""
    security = settings.kafka_security
    try:
        wait_for_kafka(
            settings.kafka_bootstrap_servers, timeout=BROKER_WAIT_SECONDS, security=security
        )
    except KafkaSecurityError:
        raise
    except BrokerError as exc:
        raise BrokerError(
            f"Kafka at {settings.kafka_bootstrap_servers} is not answering: {exc}"
        ) from exc
    return ensure_topics(
        settings.kafka_bootstrap_servers,
        settings.topics(),
        settings.topic_partitions,
        security=security,
    )
