"""An ``authorization_function`` for MLflow's auth app that also accepts one bearer token.

MLflow's client sends ``MLFLOW_TRACKING_TOKEN`` as ``Authorization: Bearer <token>``; the stock
basic-auth function only knows passwords. Deployments put a token-checking proxy or plug-in in
front; this one stands in for it in the tests: the token in ``TEST_MLFLOW_BEARER_TOKEN`` is the
user ``TEST_MLFLOW_BEARER_USER``, anything else goes to MLflow's own basic-auth function.
Imported by the server process (``MLFLOW_AUTH_CONFIG_PATH``), not by the tests.
"""

from __future__ import annotations

import hmac
import os
from typing import Any


def authenticate_request_basic_or_token() -> Any:
    from flask import Response, request
    from mlflow.server.auth import authenticate_request_basic_auth
    from werkzeug.datastructures import Authorization

    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return authenticate_request_basic_auth()
    expected = os.environ.get("TEST_MLFLOW_BEARER_TOKEN", "")
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return Authorization("bearer", {"username": os.environ["TEST_MLFLOW_BEARER_USER"]})
    return Response("invalid token", 401)
