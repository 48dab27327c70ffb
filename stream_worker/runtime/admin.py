"""Topic administration with kafka-python (synchronous): create up front, inspect, delete.

Topics must exist before anything produces to them: Tansu auto-creates a missing topic with
4 partitions on the first produce, and it cannot add partitions afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from stream_worker.exceptions import BrokerError

__all__ = ["delete_topics", "ensure_topics", "topic_partitions"]

log = logging.getLogger(__name__)

_NO_ERROR = 0
_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36


def _one_line(text: object, limit: int = 240) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _error_name(code: int) -> str:
    import kafka.errors

    return str(kafka.errors.for_code(code).__name__)


@contextmanager
def _admin(bootstrap: str, timeout: float, action: str) -> Iterator[Any]:
    """A KafkaAdminClient for one operation; every failure becomes a one-line BrokerError."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = max(int(timeout * 1000), 100)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="income-scorer-admin",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except (KafkaError, OSError) as exc:
        raise BrokerError(
            f"cannot {action}: Kafka at {bootstrap} is unreachable "
            f"({type(exc).__name__}: {_one_line(exc)})"
        ) from exc
    try:
        yield admin
    except (KafkaError, OSError) as exc:
        raise BrokerError(
            f"cannot {action} on {bootstrap}: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
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
    bootstrap: str, topics: Sequence[str], partitions: int, timeout: float = 30
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
    with _admin(bootstrap, timeout, f"create topics {', '.join(names)}") as admin:
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
                    + (f" ({_one_line(detail)})" if detail else "")
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
    bootstrap: str, topics: Sequence[str], timeout: float = 30, *, missing_ok: bool = True
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
    with _admin(bootstrap, timeout, f"delete topics {', '.join(names)}") as admin:
        response = admin.delete_topics(names, timeout_ms=timeout_ms, raise_errors=False)
    deleted = []
    for result in response["topics"]:
        name, code = result["name"], result["error_code"]
        if code == _NO_ERROR:
            deleted.append(name)
        elif not (code == _UNKNOWN_TOPIC and missing_ok):
            raise BrokerError(f"cannot delete topic {name!r} on {bootstrap}: {_error_name(code)}")
    return deleted


def topic_partitions(bootstrap: str, topic: str, timeout: float = 30) -> int:
    """Number of partitions of ``topic``.

    Raises:
        BrokerError: the broker is unreachable or the topic does not exist.
    """
    with _admin(bootstrap, timeout, f"describe topic {topic}") as admin:
        count = _partition_counts(admin, [topic]).get(topic, "missing from the metadata")
    if isinstance(count, str):
        raise BrokerError(f"cannot describe topic {topic!r} on {bootstrap}: {count}")
    return count
