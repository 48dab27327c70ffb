"""Errors the scorer raises on purpose; callers catch these, not the libraries' own."""

from __future__ import annotations


class ScorerError(Exception):
    """Base class of every error the scorer raises on purpose."""


class BrokerError(ScorerError):
    """The Kafka broker will not start, cannot be reached, or refused an admin request."""


class KafkaSecurityError(BrokerError):
    """The broker refused the security settings: credentials, certificate or mechanism.

    Never retried: waiting does not fix it, and repeated attempts can lock an account.
    """


class ConfigError(ScorerError):
    """A setting is missing, malformed, or contradicts another one."""


class ModelUnavailableError(ScorerError):
    """No usable model could be loaded from the registry."""


class ScoringSystemError(ScorerError):
    """The model failed on a batch of valid records and no other model could score it.

    A system fault, never the records' fault: ``BatchScorer.process`` raises it instead of
    dead-lettering them, and the scoring loop lets it propagate, so the worker stops without
    acknowledging (hence without committing) the batch; a restart scores it again.
    """


class SmokeTestError(ScorerError):
    """A model version failed the full-path smoke test: it is refused and never serves."""


def one_line(error: object, limit: int = 240) -> str:
    """``error`` (an exception or any text) as one line of at most ``limit`` characters.

    Exceptions are prefixed with their class name, so "ConnectionRefusedError: ..." reads on
    its own in a log line or a CLI error.
    """
    text = " ".join(str(error).split())
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
