"""The chaos suite (``stream-worker chaos``): faults under steady load, counted by applicant id.

One run starts a memory Tansu broker and a SQLite MLflow store with a quick champion, then
runs each scenario of :data:`.scenarios.SCENARIOS` on fresh topics with real worker
processes, and writes the figures as JSON and as ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_worker.devtools.chaos.stack import Say
from stream_worker.devtools.chaos.tally import Figures
from stream_worker.exceptions import ConfigError

__all__ = ["ChaosOptions", "run_chaos", "scenario_names"]


@dataclass(frozen=True)
class ChaosOptions:
    scenarios: Sequence[str] = ()  # empty: all
    seconds: float = 40.0
    rate: float = 400.0
    poison_fraction: float = 0.03
    seed: int = 10
    json_path: Path | None = None
    markdown_path: Path | None = None
    workdir: Path = Path(".chaos")


def scenario_names() -> list[str]:
    from stream_worker.devtools.chaos.scenarios import SCENARIOS

    return list(SCENARIOS)


def run_chaos(opts: ChaosOptions, say: Say) -> dict[str, Any]:
    """Run the chosen scenarios; write the JSON and the markdown if asked; return the result.

    A scenario that cannot run to the end (a process does not start) is reported under
    ``errors``; the others still run.
    """
    from stream_worker.devtools.bench.sysinfo import cpu_info
    from stream_worker.devtools.chaos import scenarios as sc
    from stream_worker.devtools.chaos import stack
    from stream_worker.devtools.chaos.report import write_json, write_markdown
    from trainer.provenance import git_commit

    unknown = [n for n in opts.scenarios if n not in sc.SCENARIOS]
    if unknown:
        raise ConfigError(
            f"unknown scenario {', '.join(unknown)}: choose from {', '.join(sc.SCENARIOS)}"
        )
    if opts.seconds < 10 or opts.rate < 10:
        raise ConfigError("--duration must be at least 10 s and --rate at least 10 records/s")
    chosen = [sc.SCENARIOS[n] for n in (opts.scenarios or sc.SCENARIOS)]
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # reconnect noise during faults
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "commit": git_commit(),
        "cpu": cpu_info(),
        "load_average_start": _load_average(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate": opts.rate,
        "seconds": opts.seconds,
        "poison_fraction": opts.poison_fraction,
        "seed": opts.seed,
        "batch_max": stack.BATCH_MAX,
        "titles": {s.name: s.title for s in chosen},
        "scenarios": [],
        "errors": {},
    }
    figures: list[Figures] = []
    with contextlib.ExitStack() as cleanup:
        say(f"chaos: broker and model store in {work}")
        broker = stack.start_broker(work)
        cleanup.callback(broker.stop)
        versions = stack.train_store(work / "mlflow", say)
        res = sc.RunResources(
            work, broker, versions, opts.rate, opts.seconds, opts.poison_fraction, opts.seed, say
        )
        for scenario in chosen:
            try:
                figures.append(sc.run_scenario(scenario, res))
            except Exception as exc:  # one broken scenario must not hide the others' figures
                result["errors"][scenario.name] = f"{type(exc).__name__}: {exc}"[:600]
                say(f"[{scenario.name}] did not run to the end: {result['errors'][scenario.name]}")
    result["scenarios"] = [f.to_dict() for f in figures]
    result["passed"] = bool(figures) and all(f.passed for f in figures) and not result["errors"]
    result["load_average_end"] = _load_average()
    if opts.json_path is not None:
        write_json(result, opts.json_path)
        say(f"wrote {opts.json_path}")
    if opts.markdown_path is not None:
        write_markdown(result, opts.markdown_path)
        say(f"wrote {opts.markdown_path}")
    return result


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
