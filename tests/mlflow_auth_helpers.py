"""A real ``mlflow server --app-name basic-auth`` on loopback, its users made through its API.

MLflow's own authentication app: users, passwords and permissions in a database of its own
(SQLite here), an admin created at the first start from ``basic_auth.ini``. Clients send
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` themselves (HTTP basic).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import LOOPBACK, ManagedProcess, mlflow_server

ADMIN = "admin"

# Everything a client of this server might inherit from the test runner's environment.
MLFLOW_CLIENT_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def clean_environment(**extra: str) -> dict[str, str]:
    """The runner's environment without MLflow, trainer, worker and Prefect settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in MLFLOW_CLIENT_ENV and not k.startswith(("TRAINER_", "SCORER_", "PREFECT_"))
    }
    env.update(extra)
    return env


@dataclass
class AuthServer:
    """The running server, its admin password and the users created on it."""

    folder: Path
    port: int
    admin_password: str
    process: ManagedProcess | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    # A bearer token the server also accepts, as this user (tests/mlflow_token_auth.py).
    token: tuple[str, str] | None = None

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "mlflow-server.log"

    def start(self, timeout: float = 120.0) -> AuthServer:
        config = self.folder / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{self.folder / 'basic_auth.db'}\n"
            f"admin_username = {ADMIN}\n"
            f"admin_password = {self.admin_password}\n"
            f"authorization_function = {self.authorization_function}\n",
            encoding="utf-8",
        )
        proc = mlflow_server(self.folder, self.port)
        proc.argv = [*proc.argv, "--app-name", "basic-auth"]
        proc.env = {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            # the auth app's CSRF protection refuses to start without a fixed key
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-flask-key",
        }
        if self.token is not None:
            user, token = self.token
            tests = str(Path(__file__).resolve().parent)
            pythonpath = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
            proc.env |= {
                "TEST_MLFLOW_BEARER_USER": user,
                "TEST_MLFLOW_BEARER_TOKEN": token,
                "PYTHONPATH": pythonpath,
            }
        self.process = proc.start(timeout=timeout)
        return self

    @property
    def authorization_function(self) -> str:
        if self.token is None:
            return "mlflow.server.auth:authenticate_request_basic_auth"  # MLflow's own
        return "mlflow_token_auth:authenticate_request_basic_or_token"

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def api(
        self, method: str, path: str, body: dict[str, Any] | None, user: str = ADMIN
    ) -> dict[str, Any]:
        """One REST call as ``user`` (its password from ``passwords``, the admin's by default)."""
        password = self.admin_password if user == ADMIN else self.passwords[user]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.uri}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=15) as resp:
            text = resp.read().decode()
        return json.loads(text) if text.strip() else {}

    def create_user(self, username: str, password: str) -> None:
        self.api(
            "POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password}
        )
        self.passwords[username] = password

    def set_password(self, username: str, password: str) -> None:
        """Change ``username``'s password on the server (as the admin)."""
        self.api(
            "PATCH",
            "/api/2.0/mlflow/users/update-password",
            {"username": username, "password": password},
        )
        self.passwords[username] = password

    def refused_requests(self) -> int:
        """How many requests the server has answered 401 so far (its access log)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if '" 401' in line)

    def answers(self, user: str) -> bool:
        try:
            self.api("GET", "/api/2.0/mlflow/experiments/search?max_results=1", None, user)
        except urllib.error.HTTPError:
            return False
        return True


def start_auth_server(
    folder: Path, admin_password: str, token: tuple[str, str] | None = None
) -> AuthServer:
    """The server; with ``token`` (user, token) it also accepts that bearer token."""
    folder.mkdir(parents=True, exist_ok=True)
    return AuthServer(folder, free_port(), admin_password, token=token).start()
