"""Credentials of the secured-broker tests: made fresh per session, so the leak test can search
every output for these exact strings."""

from __future__ import annotations

import uuid

USER = "scorer"
PASSWORD = f"pw-{uuid.uuid4().hex}"
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"
