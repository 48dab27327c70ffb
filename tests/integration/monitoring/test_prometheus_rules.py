"""The shipped Prometheus files, checked by the real promtool.

promtool comes with Debian's ``prometheus`` package; without it these tests fail (they do not
skip): the alert rules would otherwise ship unchecked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_FILE = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD_DIR = ROOT / "monitoring" / "grafana" / "dashboards"
CONFIG_FILES = ["prometheus.yml", "prometheus.local.yml"]

EXPECTED_ALERTS = {
    "ScorerWorkerDown",
    "NoPredictionsWhileInputFlows",
    "HighP99Latency",
    "HighDeadLetterRate",
    "FeatureDrift",
    "PredictionDrift",
    "ModelReloadFailures",
    "ConsumerLagGrowing",
    "ModelNotLoaded",
    "LivePerformanceDrop",
    "LabelsStopped",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's prometheus package "
            "(apt-get install -y prometheus) to check the alert rules and scrape configs"
        )
    return path


def run_promtool(promtool: str, *args: str | Path) -> str:
    proc = subprocess.run(
        [promtool, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    output = f"$ promtool {' '.join(map(str, args))}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, output
    return output


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in load_yaml(ALERTS_FILE)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


@pytest.mark.parametrize("config", CONFIG_FILES)
def test_promtool_check_config(promtool: str, config: str) -> None:
    output = run_promtool(promtool, "check", "config", PROMETHEUS_DIR / config)
    assert "SUCCESS" in output


def test_promtool_check_rules(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", ALERTS_FILE)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_test_rules(promtool: str) -> None:
    output = run_promtool(promtool, "test", "rules", ALERTS_TEST_FILE)
    assert "SUCCESS" in output


def test_dashboard_exprs_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each Grafana target, written as a recording rule, passes promtool's parser."""
    rules = []
    for board_file in sorted(DASHBOARD_DIR.glob("*.json")):
        board = json.loads(board_file.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                rules.append({"record": f"dashboard:expr_{len(rules)}", "expr": target["expr"]})
    assert rules
    rules_file = tmp_path / "dashboard_exprs.yml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8"
    )
    output = run_promtool(promtool, "check", "rules", rules_file)
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_alerts_have_severity_and_annotations() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert by_name["FeatureDrift"]["for"] == "5m"
    assert by_name["PredictionDrift"]["for"] == "5m"
    assert by_name["LivePerformanceDrop"]["for"] == "10m"


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    tests = load_yaml(ALERTS_TEST_FILE)
    assert tests["rule_files"] == [ALERTS_FILE.name]

    firing: dict[str, int] = dict.fromkeys(rules, 0)
    silent: dict[str, int] = dict.fromkeys(rules, 0)
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            assert name in rules, f"{case['name']}: tests unknown alert {name}"
            expected = check.get("exp_alerts") or []
            if not expected:
                silent[name] += 1
                continue
            firing[name] += 1
            for alert in expected:
                # A firing case pins the labels routing depends on and the rendered text.
                assert alert["exp_labels"]["severity"] == rules[name]["labels"]["severity"]
                assert set(alert.get("exp_annotations", {})) >= {"summary", "description"}, (
                    f"{case['name']}: annotations of {name} not checked"
                )
    assert not [name for name, n in firing.items() if n == 0], f"never fire: {firing}"
    assert not [name for name, n in silent.items() if n == 0], f"never silent: {silent}"
