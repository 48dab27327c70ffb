"""A/B of the worker's latency: ``python -m stream_worker.devtools.bench.ab``.

What each latency change bought is measured here, not guessed: one broker and one model
store (the cached default model, as ``stream-worker bench``), then a traced worker
(:mod:`.trace`) per *variant* at one offered rate, the variants alternating round after
round so that the machine's drift over the run falls on all of them alike. Per variant it
prints the end-to-end p50/p99/max of every round and the median of each breakdown stage.

A variant is a source tree and environment variables::

    --variant before=/tmp/wt-before --variant after=. --env before=SCORER_FETCH_MAX_WAIT_MS=10

``PATH`` goes first on the traced worker's ``PYTHONPATH``, so a ``git worktree`` of an
older commit runs that commit's worker against the same broker, model and producer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_worker.devtools.bench import latency as lat
from stream_worker.devtools.bench.context import BenchOptions, BenchRun
from stream_worker.devtools.bench.runner import prepare
from stream_worker.exceptions import ConfigError, ScorerError


@dataclass
class Variant:
    name: str
    tree: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = {**base, **self.env}
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree.resolve())
        return env


def parse_variants(specs: Sequence[str], envs: Sequence[str]) -> list[Variant]:
    """``NAME=PATH`` (``NAME`` alone: this tree) and ``NAME=KEY=VALUE`` into variants."""
    variants: dict[str, Variant] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not name or name in variants:
            raise ConfigError(f"--variant {spec!r}: give each variant a new NAME[=PATH]")
        tree = Path(path) if path else None
        if tree is not None and not (tree / "stream_worker").is_dir():
            raise ConfigError(f"--variant {spec!r}: {tree} holds no stream_worker package")
        variants[name] = Variant(name, tree)
    for spec in envs:
        name, _, assignment = spec.partition("=")
        key, eq, value = assignment.partition("=")
        if name not in variants or not key or not eq:
            raise ConfigError(f"--env {spec!r}: expected VARIANT=KEY=VALUE for a named variant")
        variants[name].env[key] = value
    if len(variants) < 2:
        raise ConfigError("an A/B needs at least two --variant")
    return list(variants.values())


def one_round(run: BenchRun, variant: Variant, tag: str) -> dict[str, Any]:
    """A traced worker of ``variant`` at ``--rate``: end to end and the breakdown."""
    traced = lat.curve_phase(
        run,
        tag,
        lambda env: run.launch(run.traced_worker(variant.environment(env), f"{tag}-worker")),
        [run.opts.rate],
        lat.get_trace,
    )
    main = traced.main
    return {
        "p50_ms": main.p50_ms,
        "p99_ms": main.p99_ms,
        "max_ms": main.max_ms,
        "achieved_rps": main.achieved_rps,
        "breakdown": lat.breakdown(traced.trace),
    }


def summary(variant: Variant) -> dict[str, Any]:
    """Each round's end-to-end figures, and each stage's p50/p99 median over the rounds."""
    stages: dict[str, dict[str, float]] = {}
    names = [f"{a}_to_{b}" for a, b in zip(lat.STAGES, lat.STAGES[1:], strict=False)]
    for stage in (*names, "total"):
        found = [r["breakdown"]["stages"].get(stage) for r in variant.rounds]
        found = [s for s in found if s is not None]
        if found:
            stages[stage] = {
                "p50_ms": round(statistics.median(s["p50_ms"] for s in found), 2),
                "p99_ms": round(statistics.median(s["p99_ms"] for s in found), 2),
            }
    return {
        "tree": str(variant.tree) if variant.tree else ".",
        "env": variant.env,
        "rounds": [{k: v for k, v in r.items() if k != "breakdown"} for r in variant.rounds],
        "p99_ms_median": statistics.median(r["p99_ms"] for r in variant.rounds),
        "p50_ms_median": statistics.median(r["p50_ms"] for r in variant.rounds),
        "stages": stages,
    }


def run_ab(opts: BenchOptions, variants: list[Variant], rounds: int) -> dict[str, Any]:
    run = BenchRun(opts, print)
    try:
        prepare(run)
        for i in range(rounds):
            order = variants if i % 2 == 0 else list(reversed(variants))
            for variant in order:
                print(f"round {i + 1}/{rounds}: {variant.name} at {opts.rate:g} records/s …")
                variant.rounds.append(one_round(run, variant, f"ab{i}{variant.name}"))
                r = variant.rounds[-1]
                print(f"    p50 {r['p50_ms']:.1f}  p99 {r['p99_ms']:.1f}  max {r['max_ms']:.1f} ms")
    finally:
        run.close()
    return {v.name: summary(v) for v in variants}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_worker.devtools.bench.ab")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[=PATH]")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=KEY=VALUE")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=None, help="as stream-worker bench --model")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = parser.parse_args(argv)
    try:
        variants = parse_variants(args.variant, args.env)
        opts = BenchOptions(
            rate=args.rate,
            latency_seconds=args.seconds,
            model=args.model,
            workdir=args.workdir,
        )
        result = run_ab(opts, variants, args.rounds)
    except (ConfigError, ScorerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    for name, s in result.items():
        stages = ", ".join(
            f"{k} {v['p50_ms']:.1f}/{v['p99_ms']:.1f}" for k, v in s["stages"].items()
        )
        print(f"{name}: p50 {s['p50_ms_median']:.1f}, p99 {s['p99_ms_median']:.1f} ms; {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
