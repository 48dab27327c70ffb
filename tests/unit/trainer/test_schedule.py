"""``trainer schedule``'s arguments and the schedule they make, without a Prefect server.

Bad arguments end as one readable line before logging, Prefect or a server starts, so
``main(argv)`` shows what the console script prints. The schedule firing for real is in
tests/integration/trainer/test_schedule.py.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.exceptions import TrainerError
from trainer.schedule import LocalPrefectServer, Schedule
from trainer.settings import TrainerSettings


@pytest.fixture(autouse=True)
def _private_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ``TRAINER_*`` or Prefect API from the caller; ``main`` sets env defaults, undone after."""
    for key in list(os.environ):
        if key.startswith("TRAINER_") or key == "PREFECT_API_URL":
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


def test_cron_and_interval_together_are_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schedule", "--cron", "* * * * *", "--interval", "30"]) == 2
    out = capsys.readouterr()
    assert _one_line(out.err) == (
        "trainer: error: --cron and --interval exclude each other: give one of them"
    )
    assert out.out == ""


@pytest.mark.parametrize("value", ["0", "0.5", "-3", "soon"])
def test_an_interval_below_one_second_or_not_a_number_is_one_line(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert main(["schedule", "--interval", value]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("trainer: error: Invalid value for '--interval'")


def test_an_interval_beside_a_cron_from_the_environment_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_SCHEDULE_CRON", "* * * * *")
    assert main(["schedule", "--interval", "30"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("trainer: a cron expression and an interval are both set")
    assert "TRAINER_SCHEDULE_INTERVAL_SECONDS" in line


def test_a_bad_cron_is_still_refused_when_no_interval_is_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schedule", "--cron", "*/0 * * * *", "--trials", "1"]) == 1
    assert _one_line(capsys.readouterr().err) == (
        "trainer: not a valid cron expression: '*/0 * * * *'"
    )


def test_an_interval_makes_an_interval_schedule_and_ignores_the_default_cron() -> None:
    schedule = Schedule.from_settings(TrainerSettings(schedule_interval_seconds=30))
    assert schedule == Schedule(interval_seconds=30)
    assert schedule.serve_arguments() == {"interval": datetime.timedelta(seconds=30)}
    assert str(schedule) == "every 30 s"


def test_without_an_interval_the_cron_expression_is_the_schedule() -> None:
    schedule = Schedule.from_settings(TrainerSettings(schedule_cron="*/5 * * * *"))
    assert schedule.serve_arguments() == {"cron": "*/5 * * * *"}
    assert schedule.runner_poll_seconds() is None


@pytest.mark.parametrize(("interval", "poll"), [(1, 1), (3.7, 3), (10, None), (600, None)])
def test_the_runner_polls_faster_only_for_intervals_below_its_default(
    interval: float, poll: int | None
) -> None:
    assert Schedule(interval_seconds=interval).runner_poll_seconds() == poll


def test_the_interval_setting_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRAINER_SCHEDULE_INTERVAL_SECONDS", "45")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect-server:4200/api")
    settings = TrainerSettings()
    assert Schedule.from_settings(settings) == Schedule(interval_seconds=45)
    assert settings.prefect_api_url == "http://prefect-server:4200/api"


def test_a_local_server_that_cannot_start_is_one_trainer_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    server = LocalPrefectServer(not_a_folder / "home", startup_timeout=5)
    assert server.api_url.startswith("http://127.0.0.1:")
    with pytest.raises(TrainerError, match="cannot start a local Prefect server") as caught:
        server.start()
    assert "\n" not in str(caught.value)
    assert server.process is None
    server.stop()  # nothing started: nothing to stop, no error
