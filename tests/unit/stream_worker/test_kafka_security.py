"""KafkaSecurity: validation, the kwargs of each client library, refusals as one line."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka import errors as aio_errors
from kafka import errors as kp_errors
from kafka.net.sasl.scram import ScramClient
from pydantic import ValidationError

from stream_worker.devtools.certs import make_pki
from stream_worker.devtools.secure_front import ScramCredential, _AuthFailedError, _Scram
from stream_worker.exceptions import KafkaSecurityError
from stream_worker.kafka_security import (
    KafkaSecurity,
    aiokafka_kwargs,
    faust_credentials,
    kafka_python_kwargs,
    security_failure,
)
from stream_worker.settings import WorkerSettings

SECRET = "s3cr3t-never-shown"
ENV = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "KAFKA_SSL_CHECK_HOSTNAME",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki")).ca_cert


def _scram(cafile: Path | None = None, **extra: object) -> KafkaSecurity:
    return KafkaSecurity.model_validate(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "scorer",
            "sasl_password": SECRET,
            "ssl_cafile": cafile,
            **extra,
        }
    )


def test_default_is_plaintext_and_every_library_gets_nothing() -> None:
    sec = KafkaSecurity()
    assert sec.security_protocol == "PLAINTEXT"
    assert sec.ssl_check_hostname
    assert kafka_python_kwargs(sec) == {}
    assert aiokafka_kwargs(sec) == {}
    assert faust_credentials(sec) is None
    assert WorkerSettings().kafka_security == sec


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, cafile: Path) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "scorer")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(cafile))
    monkeypatch.setenv("KAFKA_SSL_CHECK_HOSTNAME", "false")
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", "")  # empty counts as unset
    sec = WorkerSettings().kafka_security
    assert sec.sasl_mechanism == "SCRAM-SHA-256"
    assert sec.ssl_cafile == cafile
    assert sec.ssl_certfile is None
    assert not sec.ssl_check_hostname
    assert sec.sasl_password is not None
    assert sec.sasl_password.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
            "needs KAFKA_SASL_USERNAME",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
            },
            "needs KAFKA_SASL_PASSWORD",
        ),
        ({"sasl_username": "u", "sasl_password": SECRET}, "does not authenticate"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "not a readable file"),
        ({"ssl_cafile": "/etc/hostname"}, "does not use TLS"),
        ({"security_protocol": "SSL", "ssl_certfile": "/etc/hostname"}, "go together"),
        ({"security_protocol": "TLS"}, "Input should be"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "Input should be"),
    ],
)
def test_inconsistent_settings_are_one_readable_line(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaSecurity.model_validate(fields)
    first = caught.value.errors()[0]["msg"]
    assert message in first
    assert "\n" not in first
    assert SECRET not in str(caught.value)  # hide_input_in_errors: the input is never quoted


def test_the_password_is_never_shown(cafile: Path) -> None:
    sec = _scram(cafile)
    settings = WorkerSettings(kafka_security=sec)
    for text in (repr(sec), str(sec), sec.describe(), repr(settings), settings.model_dump_json()):
        assert SECRET not in text
    assert "scorer" in sec.describe()
    assert SECRET not in repr(faust_credentials(sec))


def test_kafka_python_kwargs(cafile: Path) -> None:
    options = kafka_python_kwargs(_scram(cafile))
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "scorer",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_aiokafka_kwargs_tls_only_without_hostname_check(cafile: Path) -> None:
    sec = KafkaSecurity.model_validate(
        {"security_protocol": "SSL", "ssl_cafile": cafile, "ssl_check_hostname": False}
    )
    options = aiokafka_kwargs(sec)
    assert options["security_protocol"] == "SSL"
    assert not options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the chain is still checked
    assert "sasl_mechanism" not in options


def test_sasl_plaintext_has_no_tls() -> None:
    sec = KafkaSecurity.model_validate(
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": SECRET,
        }
    )
    assert "ssl_context" not in kafka_python_kwargs(sec)
    assert aiokafka_kwargs(sec)["security_protocol"] == "SASL_PLAINTEXT"


def test_faust_credentials(cafile: Path) -> None:
    sasl = faust_credentials(_scram(cafile))
    assert isinstance(sasl, faust.SASLCredentials)
    assert sasl.protocol.value == "SASL_SSL"
    assert sasl.mechanism.value == "SCRAM-SHA-512"
    assert sasl.username == "scorer"
    assert isinstance(sasl.ssl_context, ssl.SSLContext)
    tls = faust_credentials(KafkaSecurity(security_protocol="SSL", ssl_cafile=cafile))
    assert isinstance(tls, faust.SSLCredentials)
    assert tls.protocol.value == "SSL"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (aio_errors.SaslAuthenticationFailed(), "refused the credentials of user 'scorer'"),
        (kp_errors.SaslAuthenticationFailedError(), "refused the credentials"),
        (aio_errors.UnsupportedSaslMechanismError(), "does not offer SASL mechanism SCRAM-SHA-512"),
        (KeyError("v"), "its SCRAM answer carried an error"),
    ],
)
def test_refusals_become_one_line(error: Exception, expected: str) -> None:
    wrapped = RuntimeError("unable to bootstrap")
    wrapped.__cause__ = error
    refused = security_failure(wrapped, "broker:9093", _scram())
    assert isinstance(refused, KafkaSecurityError)
    assert expected in str(refused)
    assert "\n" not in str(refused)
    assert SECRET not in str(refused)


def test_tls_verification_failures_name_the_fix() -> None:
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    assert "set KAFKA_SSL_CAFILE" in str(security_failure(untrusted, "b:9093", _scram()))
    mismatch = ssl.SSLCertVerificationError(1, "certificate verify failed")
    mismatch.verify_message = "Hostname mismatch, certificate is not valid for 'b'."
    assert "does not name this host" in str(security_failure(mismatch, "b:9093", _scram()))


def test_other_failures_are_not_refusals() -> None:
    assert security_failure(ConnectionRefusedError(111, "refused"), "b:9093", _scram()) is None
    assert security_failure(TimeoutError(), "b:9093", None) is None


def _exchange(mechanism: str, stored: str, given: str) -> bytes:
    """kafka-python's SCRAM client against the front's SCRAM server; the server-final."""
    server = _Scram(mechanism, {"scorer": ScramCredential.derive(mechanism, stored)})
    client = ScramClient("scorer", given, mechanism)
    first, done = server.respond(client.first_message())
    assert not done
    client.process_server_first_message(first)
    final, done = server.respond(client.final_message())
    assert done
    client.process_server_final_message(final)  # checks the server's signature
    return final


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_the_fronts_scram_server_accepts_the_right_password(mechanism: str) -> None:
    final = _exchange(mechanism, SECRET, SECRET)
    assert final.startswith(b"v=")
    assert base64.b64decode(final[2:])


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_the_fronts_scram_server_refuses_a_wrong_password(mechanism: str) -> None:
    with pytest.raises(_AuthFailedError):
        _exchange(mechanism, SECRET, "not-it")


def test_cli_reports_inconsistent_settings_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream_worker.cli import main

    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    assert main(["consume", "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "needs KAFKA_SASL_MECHANISM" in err
    assert SECRET not in err
