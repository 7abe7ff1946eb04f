"""`twofold policy init`, `twofold enclave platform-key` and configuration errors of the services."""

from __future__ import annotations

import json

from twofold.enclave.measure import current_measurement, whole_measurement
from twofold.errors import ConfigError

from ..conftest import run_cli


def test_policy_init_resolves_datasets_and_measurements(home, datasets, tmp_path):
    out = tmp_path / "policy.json"
    result = run_cli("policy", "init", "--out", str(out), "--dataset", str(datasets["allowed"].path), "--dataset",
                     "ds-0123456789abcdef", "--measurement", "both", "--allow-simulation",
                     env={"TWOFOLD_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    policy = json.loads(out.read_text())
    assert policy["allow_simulation"] is True
    assert set(policy["measurements"]) == {current_measurement(), whole_measurement()}
    rule = next(iter(policy["measurements"].values()))
    assert rule["datasets"] == [datasets["allowed"].dataset_id, "ds-0123456789abcdef"]
    key = run_cli("enclave", "platform-key", env={"TWOFOLD_HOME": str(home)}).stdout.strip()
    assert policy["simulation_platform_keys"] == [key]


def test_key_broker_refuses_a_bad_policy_with_one_line(home, keystore, tmp_path):
    (tmp_path / "policy.json").write_text('{"version": 1, "measurements": {"not-a-digest": {}}}')
    result = run_cli("kbs", "serve", "--keystore", str(keystore.directory), "--policy", str(tmp_path / "policy.json"),
                     "--port", "0")
    assert result.returncode == ConfigError.exit_code
    assert result.stderr.strip().startswith("twofold: error:") and "SHA-256" in result.stderr
    result = run_cli("kbs", "serve", "--keystore", str(keystore.directory), "--policy", str(tmp_path / "none.json"))
    assert result.returncode == ConfigError.exit_code and "does not exist" in result.stderr
