"""``trainer`` in-process: bad arguments and settings end as one readable line and exit non-zero.

Each case fails before any logging is set up, store is opened or data is read, so calling
``main(argv)`` shows exactly what the console script would print. The cases that need a
process of their own (logging, Prefect, a real store) are in tests/integration/trainer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from trainer.cli import main


@pytest.fixture(autouse=True)
def _private_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ``TRAINER_*`` settings from the caller; ``main`` sets env defaults, undone after."""
    for key in list(os.environ):
        if key.startswith("TRAINER_"):
            monkeypatch.delenv(key)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _one_line(err: str) -> str:
    """The whole of stderr, which must be exactly one line and no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--bogus"], "--bogus"),
        (["run", "--trials", "0"], "--trials"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert main(args) == 2
    out = capsys.readouterr()
    line = _one_line(out.err)
    assert line.startswith("trainer: error:")
    assert needle in line
    assert out.out == ""


def test_invalid_environment_setting_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_VALIDATION_FRACTION", "0.9")
    assert main(["run", "--no-flow"]) == 2
    out = capsys.readouterr()
    assert _one_line(out.err).startswith("trainer: invalid setting validation_fraction")
    assert out.out == ""


@pytest.mark.parametrize("cron", ["every day at 3", "61 * * * *", "* * *"])
def test_bad_cron_expression_is_one_line(capsys: pytest.CaptureFixture[str], cron: str) -> None:
    assert main(["schedule", "--cron", cron]) == 1
    assert _one_line(capsys.readouterr().err) == f"trainer: not a valid cron expression: {cron!r}"


def test_bad_cron_from_the_environment_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_SCHEDULE_CRON", "nightly")
    assert main(["schedule"]) == 1
    assert _one_line(capsys.readouterr().err) == "trainer: not a valid cron expression: 'nightly'"
