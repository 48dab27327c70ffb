"""``stream-worker produce --outcomes`` and ``capture``: refusals end as one readable line."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_worker.cli import main


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


def test_synthetic_applicants_cannot_have_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before anything connects: the bootstrap points nowhere.
    assert main(["produce", "--synthetic", "--outcomes", "--bootstrap", "127.0.0.1:1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--outcomes" in line
    assert "synthetic applicants have no true label" in line


@pytest.mark.parametrize("fraction", ["-0.1", "1.5"])
def test_outcome_fraction_is_a_share(capsys: pytest.CaptureFixture[str], fraction: str) -> None:
    assert main(["produce", "--outcomes", "--outcome-fraction", fraction]) == 2
    assert "--outcome-fraction" in _one_line(capsys.readouterr().err)


def test_capture_into_an_unwritable_location_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uri = str(blocker / "capture")
    # Checked before the broker: the bootstrap points nowhere.
    assert main(["capture", "--capture-uri", uri, "--bootstrap", "127.0.0.1:1"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"stream-worker: capture location {uri} is not writable:")
