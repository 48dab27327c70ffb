"""Kafka security: one settings block, and how each client library is given it.

Every Kafka client of the project (the Faust worker, the capture's aiokafka clients, the
kafka-python tools, topic admin, the benchmark and the test helpers) takes its security
options from one :class:`KafkaSecurity`, through one function per library:
:func:`kafka_python_kwargs`, :func:`aiokafka_kwargs` and :func:`faust_credentials`.

The password is a :class:`~pydantic.SecretStr`: its ``repr``/``str`` are masked, so it never
reaches a log line, a view, an MLflow record or an exception text; only the three functions
above unwrap it, right where a client is built.
"""

from __future__ import annotations

import ssl
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_worker.exceptions import KafkaSecurityError

if TYPE_CHECKING:
    import faust

__all__ = [
    "KafkaSecurity",
    "SaslMechanism",
    "SecurityProtocol",
    "aiokafka_kwargs",
    "faust_credentials",
    "kafka_python_kwargs",
    "ssl_context",
]


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class KafkaSecurity(BaseSettings):
    """How every client authenticates to Kafka and protects the connection.

    Env names (the ``KAFKA_`` prefix): ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``,
    ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_CAFILE``,
    ``KAFKA_SSL_CERTFILE``, ``KAFKA_SSL_KEYFILE``, ``KAFKA_SSL_CHECK_HOSTNAME``. An empty
    value counts as unset (a Kubernetes ConfigMap often carries empty keys).
    """

    model_config = SettingsConfigDict(
        env_prefix="KAFKA_",
        frozen=True,
        extra="ignore",
        env_ignore_empty=True,
        # a validation error never quotes the input: it may hold the password
        hide_input_in_errors=True,
    )

    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, repr=False)
    # A private CA's PEM bundle; None: the system's trust store (right for managed services).
    ssl_cafile: Path | None = None
    # A client certificate and its key (mutual TLS), PEM; the key unencrypted.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in (
            SecurityProtocol.SASL_PLAINTEXT,
            SecurityProtocol.SASL_SSL,
        )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    def describe(self) -> str:
        """One line for logs and errors: protocol, mechanism, user; never the password."""
        parts = [str(self.security_protocol)]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username!r}")
        if self.uses_tls and self.ssl_cafile is not None:
            parts.append(f"CA {self.ssl_cafile}")
        return ", ".join(parts)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _problems(sec: KafkaSecurity) -> list[str]:
    """Every inconsistency of ``sec``, each a short phrase naming the env variables."""
    problems = []
    if sec.uses_sasl:
        if sec.sasl_mechanism is None:
            problems.append(
                f"KAFKA_SECURITY_PROTOCOL={sec.security_protocol} needs KAFKA_SASL_MECHANISM "
                "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if not sec.sasl_username:
            problems.append(
                f"KAFKA_SECURITY_PROTOCOL={sec.security_protocol} needs KAFKA_SASL_USERNAME"
            )
        if sec.sasl_password is None or not sec.sasl_password.get_secret_value():
            problems.append(
                f"KAFKA_SECURITY_PROTOCOL={sec.security_protocol} needs KAFKA_SASL_PASSWORD"
            )
    else:
        given = [
            name
            for name, value in (
                ("KAFKA_SASL_MECHANISM", sec.sasl_mechanism),
                ("KAFKA_SASL_USERNAME", sec.sasl_username),
                ("KAFKA_SASL_PASSWORD", sec.sasl_password),
            )
            if value is not None
        ]
        if given:
            problems.append(
                f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={sec.security_protocol} "
                "does not authenticate (use SASL_SSL or SASL_PLAINTEXT)"
            )
    files = (
        ("KAFKA_SSL_CAFILE", sec.ssl_cafile),
        ("KAFKA_SSL_CERTFILE", sec.ssl_certfile),
        ("KAFKA_SSL_KEYFILE", sec.ssl_keyfile),
    )
    if sec.uses_tls:
        for name, path in files:
            if path is not None and not path.is_file():
                problems.append(f"{name}={path} is not a readable file")
        if (sec.ssl_certfile is None) != (sec.ssl_keyfile is None):
            problems.append("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mutual TLS)")
    else:
        given = [name for name, path in files if path is not None]
        if given:
            problems.append(
                f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={sec.security_protocol} "
                "does not use TLS (use SSL or SASL_SSL)"
            )
    return problems


def ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    """The client TLS context (None without TLS): the CA file or the system's trust store,
    the client certificate if any, hostname checking unless turned off."""
    if not sec.uses_tls:
        return None
    context = ssl.create_default_context(
        purpose=ssl.Purpose.SERVER_AUTH,
        cafile=str(sec.ssl_cafile) if sec.ssl_cafile is not None else None,
    )
    if sec.ssl_certfile is not None and sec.ssl_keyfile is not None:
        context.load_cert_chain(str(sec.ssl_certfile), str(sec.ssl_keyfile))
    # Verification of the chain stays on either way; only the name check can be turned off.
    context.check_hostname = sec.ssl_check_hostname
    return context


def _password(sec: KafkaSecurity) -> str | None:
    return sec.sasl_password.get_secret_value() if sec.sasl_password is not None else None


def kafka_python_kwargs(sec: KafkaSecurity | None) -> dict[str, Any]:
    """Options for kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
    if sec is None or sec.security_protocol is SecurityProtocol.PLAINTEXT:
        return {}
    options: dict[str, Any] = {"security_protocol": str(sec.security_protocol)}
    if sec.uses_tls:
        options["ssl_context"] = ssl_context(sec)
        options["ssl_check_hostname"] = sec.ssl_check_hostname
    if sec.uses_sasl:
        options["sasl_mechanism"] = str(sec.sasl_mechanism)
        options["sasl_plain_username"] = sec.sasl_username
        options["sasl_plain_password"] = _password(sec)
    return options


def aiokafka_kwargs(sec: KafkaSecurity | None) -> dict[str, Any]:
    """Options for aiokafka's AIOKafkaProducer and AIOKafkaConsumer."""
    if sec is None or sec.security_protocol is SecurityProtocol.PLAINTEXT:
        return {}
    options: dict[str, Any] = {"security_protocol": str(sec.security_protocol)}
    if sec.uses_tls:
        options["ssl_context"] = ssl_context(sec)
    if sec.uses_sasl:
        options["sasl_mechanism"] = str(sec.sasl_mechanism)
        options["sasl_plain_username"] = sec.sasl_username
        options["sasl_plain_password"] = _password(sec)
    return options


def faust_credentials(sec: KafkaSecurity | None) -> faust.types.auth.CredentialsT | None:
    """``broker_credentials`` of the Faust app (None for PLAINTEXT)."""
    import faust

    if sec is None or sec.security_protocol is SecurityProtocol.PLAINTEXT:
        return None
    context = ssl_context(sec)
    if not sec.uses_sasl:
        return faust.SSLCredentials(context)
    # SASLCredentials picks SASL_SSL when given a context, SASL_PLAINTEXT without one.
    return faust.SASLCredentials(
        username=sec.sasl_username,
        password=_password(sec),
        ssl_context=context,
        mechanism=str(sec.sasl_mechanism),
    )


def security_failure(
    exc: BaseException, bootstrap: str, sec: KafkaSecurity | None
) -> KafkaSecurityError | None:
    """``exc`` as a one-line KafkaSecurityError when the broker refused the security settings
    (a retry cannot help), else None. Looks through ``__cause__``/``__context__``."""
    from aiokafka import errors as aio_errors
    from kafka import errors as kp_errors

    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, KafkaSecurityError):
            return error
        line = _refusal_line(error, bootstrap, sec, aio_errors, kp_errors)
        if line is not None:
            return KafkaSecurityError(line)
        error = error.__cause__ or error.__context__
    return None


def _refusal_line(
    error: BaseException,
    bootstrap: str,
    sec: KafkaSecurity | None,
    aio_errors: Any,
    kp_errors: Any,
) -> str | None:
    who = f"user {sec.sasl_username!r} with {sec.sasl_mechanism}" if sec and sec.uses_sasl else ""
    if isinstance(
        error, aio_errors.SaslAuthenticationFailed | kp_errors.SaslAuthenticationFailedError
    ):
        return (
            f"Kafka at {bootstrap} refused the credentials of {who or 'this client'}: "
            "check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        )
    if (
        isinstance(error, KeyError)
        and error.args == ("v",)
        and sec is not None
        and str(sec.sasl_mechanism).startswith("SCRAM-")
    ):
        # RFC 5802 lets a server end SCRAM with "e=<reason>" instead of its signature "v=...";
        # aiokafka and kafka-python then fail on the missing "v" (Tansu answers so).
        return (
            f"Kafka at {bootstrap} refused the credentials of {who}: its SCRAM answer carried "
            "an error, not its signature: check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
        )
    if isinstance(
        error, aio_errors.UnsupportedSaslMechanismError | kp_errors.UnsupportedSaslMechanismError
    ):
        mechanism = sec.sasl_mechanism if sec else "?"
        return (
            f"Kafka at {bootstrap} does not offer SASL mechanism {mechanism}: "
            "set KAFKA_SASL_MECHANISM to one it does (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or error.reason or "certificate verify failed"
        if "hostname" in str(reason).lower() or "ip address mismatch" in str(reason).lower():
            return (
                f"TLS to Kafka at {bootstrap}: the broker's certificate does not name this "
                f"host ({reason}): use the host name the certificate carries"
            )
        return (
            f"TLS to Kafka at {bootstrap}: the broker's certificate is not trusted ({reason}): "
            "set KAFKA_SSL_CAFILE to the CA that signed it"
        )
    if isinstance(error, ssl.SSLError):
        return (
            f"TLS to Kafka at {bootstrap} failed ({error.reason or error}): does this listener "
            f"speak TLS? KAFKA_SECURITY_PROTOCOL={sec.security_protocol if sec else 'PLAINTEXT'}"
        )
    return None


def _run_apart(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` to the end on a loop of its own, in a thread if one already runs."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="kafka-security-check") as pool:
        pool.submit(asyncio.run, coroutine).result()


def check_security(bootstrap: str, sec: KafkaSecurity | None, timeout: float = 10.0) -> None:
    """One connection with ``sec`` to the first bootstrap address that accepts TCP: TLS
    handshake, ApiVersions, SASL exchange. Both Kafka clients retry a refused handshake
    until their timeout and log only a vague "unable to bootstrap", so every process checks
    once this way first.

    Raises:
        KafkaSecurityError: the broker refused the credentials, the certificate or the
            mechanism (one line, no password). Anything else (no broker yet, a timeout) is
            left to the caller's own connection attempts.
    """
    if sec is None or sec.security_protocol is SecurityProtocol.PLAINTEXT:
        return
    import asyncio

    from aiokafka.conn import create_conn

    async def handshake(host: str, port: int) -> None:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                port,
                client_id="income-scorer-security-check",
                request_timeout_ms=int(timeout * 1000),
                **aiokafka_kwargs(sec),
            ),
            timeout,
        )
        conn.close()

    for raw in bootstrap.split(","):
        host, _, port = raw.strip().rpartition(":")
        if not host or not port.isdigit():
            continue
        try:
            _run_apart(handshake(host.strip("[]"), int(port)))
        except Exception as exc:
            refused = security_failure(exc, bootstrap, sec)
            if refused is not None:
                raise refused from None
            continue
        return
