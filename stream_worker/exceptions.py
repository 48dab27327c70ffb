"""Errors the scorer raises on purpose; callers catch these, not the libraries' own."""

from __future__ import annotations


class ScorerError(Exception):
    """Base class of every error the scorer raises on purpose."""


class BrokerError(ScorerError):
    """The Kafka broker will not start, cannot be reached, or refused an admin request."""


class ConfigError(ScorerError):
    """A setting is missing, malformed, or contradicts another one."""


class ModelUnavailableError(ScorerError):
    """No usable model could be loaded from the registry."""
