"""Refused MLflow credentials: one readable reason, no secret, and no retry that cannot help.

The real server (MLflow's basic-auth app) is in tests/integration/test_mlflow_credentials.py;
these check the classification and the wording on MLflow's own exception type.
"""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.exceptions import MlflowException, RestException

from trainer import flow
from trainer.exceptions import CredentialsError, DataError, RegistryError
from trainer.registry import auth_failure, connect, display_uri


def _rest(code: str, status: int) -> RestException:
    exc = RestException({"error_code": code, "message": "You are not authenticated."})
    assert exc.get_http_status_code() == status
    return exc


def test_unauthenticated_and_permission_denied_are_credential_failures() -> None:
    assert auth_failure(_rest("UNAUTHENTICATED", 401)) == (
        "not authenticated (HTTP 401): check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
        "or MLFLOW_TRACKING_TOKEN"
    )
    assert (auth_failure(_rest("PERMISSION_DENIED", 403)) or "").startswith("permission denied")
    assert auth_failure(MlflowException("boom", error_code="RESOURCE_DOES_NOT_EXIST")) is None
    assert auth_failure(ConnectionRefusedError("refused")) is None


def test_a_password_in_the_tracking_uri_is_masked() -> None:
    assert display_uri("https://bot:s3cr3t@mlflow.example.com/") == (
        "https://bot:***@mlflow.example.com/"
    )
    assert display_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert display_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"


def test_connect_reports_refused_credentials_as_their_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: Any, **kwargs: Any) -> None:
        raise _rest("UNAUTHENTICATED", 401)

    monkeypatch.setattr("mlflow.tracking.MlflowClient.search_experiments", refuse)
    with pytest.raises(CredentialsError) as caught:
        connect("https://bot:s3cr3t@mlflow.example.com")
    message = str(caught.value)
    assert message.startswith("MLflow tracking server https://bot:***@mlflow.example.com refused")
    assert "s3cr3t" not in message
    assert isinstance(caught.value, RegistryError)  # the CLI's one-line handling applies


class _State:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def result(self) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (CredentialsError("refused"), False),
        (DataError("bad file"), False),
        (RegistryError("unreachable"), True),
        (OSError("reset"), True),
    ],
)
def test_the_flow_retries_only_what_a_retry_can_fix(exc: Exception, retried: bool) -> None:
    assert flow._transient(None, None, _State(exc)) is retried
