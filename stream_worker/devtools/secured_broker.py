"""The local Tansu broker behind a TLS and/or SASL front: a secured cluster on loopback.

``SecuredBroker(folder, protocol="SASL_SSL", mechanisms=("SCRAM-SHA-512",))`` makes a CA and a
server certificate in ``folder``, starts :class:`SecureFront` on one port and Tansu on another
(advertising the front's port, so every client connection goes through the front), and
checks it answers through the front with the credentials of its first user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import SecretStr

from stream_worker.devtools.broker import LocalBroker, free_port
from stream_worker.devtools.certs import TestPki, make_pki
from stream_worker.devtools.processes import LOOPBACK
from stream_worker.devtools.secure_front import SecureFront
from stream_worker.exceptions import BrokerError
from stream_worker.kafka_security import KafkaSecurity, SaslMechanism, SecurityProtocol

__all__ = ["SecuredBroker"]


class SecuredBroker:
    """Tansu on loopback behind :class:`SecureFront`.

    Args:
        folder: where the certificates and the broker log go.
        protocol: ``SSL``, ``SASL_SSL`` or ``SASL_PLAINTEXT``.
        mechanisms: SASL mechanisms the front offers (ignored for ``SSL``).
        users: ``(mechanism, user, password)`` credentials the front stores.
    """

    def __init__(
        self,
        folder: Path,
        *,
        protocol: SecurityProtocol | str = SecurityProtocol.SASL_SSL,
        mechanisms: tuple[str, ...] = (SaslMechanism.SCRAM_SHA_512,),
        users: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        self.protocol = SecurityProtocol(protocol)
        if self.protocol is SecurityProtocol.PLAINTEXT:
            raise BrokerError("SecuredBroker needs SSL, SASL_SSL or SASL_PLAINTEXT")
        self.folder = folder
        self.mechanisms = mechanisms if self.protocol != SecurityProtocol.SSL else ()
        self.users = users
        self.pki: TestPki | None = None
        self.front: SecureFront | None = None
        self.broker: LocalBroker | None = None

    @property
    def bootstrap(self) -> str:
        """The front's address: the one clients are given."""
        if self.front is None:
            raise BrokerError("SecuredBroker is not running: call start() first")
        return f"{LOOPBACK}:{self.front.port}"

    def security(
        self,
        user: str | None = None,
        password: str | None = None,
        mechanism: str | None = None,
        cafile: Path | None = None,
    ) -> KafkaSecurity:
        """Client settings for this broker: the first user's credentials unless given."""
        assert self.pki is not None
        fields: dict[str, object] = {
            "security_protocol": self.protocol,
            "ssl_cafile": (cafile or self.pki.ca_cert)
            if self.protocol != "SASL_PLAINTEXT"
            else None,
        }
        if self.mechanisms:
            first = self.users[0] if self.users else (self.mechanisms[0], "", "")
            fields.update(
                sasl_mechanism=mechanism or first[0],
                sasl_username=user or first[1],
                sasl_password=SecretStr(password or first[2]),
            )
        return KafkaSecurity.model_validate(fields)

    def env(self, security: KafkaSecurity | None = None) -> dict[str, str]:
        """The environment of a process that uses ``security`` (default: :meth:`security`)."""
        sec = security or self.security()
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}
        env["KAFKA_SECURITY_PROTOCOL"] = str(sec.security_protocol)
        if sec.ssl_cafile is not None:
            env["KAFKA_SSL_CAFILE"] = str(sec.ssl_cafile)
        if sec.uses_sasl:
            env["KAFKA_SASL_MECHANISM"] = str(sec.sasl_mechanism)
            env["KAFKA_SASL_USERNAME"] = str(sec.sasl_username)
            assert sec.sasl_password is not None
            env["KAFKA_SASL_PASSWORD"] = sec.sasl_password.get_secret_value()
        return env

    def start(self) -> Self:
        self.pki = make_pki(self.folder / "pki")
        upstream = free_port()
        tls = self.protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)
        self.front = SecureFront(
            upstream,
            certfile=self.pki.server_cert if tls else None,
            keyfile=self.pki.server_key if tls else None,
            mechanisms=tuple(str(m) for m in self.mechanisms),
        )
        for mechanism, user, password in self.users:
            self.front.add_user(mechanism, user, password)
        self.front.start()
        self.broker = LocalBroker(
            port=upstream,
            log_path=self.folder / "broker.log",
            advertised_port=self.front.port,
            client_security=self.security(),
        )
        try:
            self.broker.start()
        except BaseException:
            self.front.stop()
            raise
        return self

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.front is not None:
            self.front.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
