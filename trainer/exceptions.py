"""Errors the trainer reports as one readable line."""


class TrainerError(Exception):
    """Base of every error the trainer CLI turns into a one-line message."""


class DataError(TrainerError):
    """The input data is missing, truncated, corrupt or does not match its checksum."""


class RegistryError(TrainerError):
    """The MLflow tracking server or model registry cannot be used."""


class CredentialsError(RegistryError):
    """The tracking server refused the MLflow credentials: a retry would be refused again."""
