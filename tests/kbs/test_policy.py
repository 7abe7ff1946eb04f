"""The owner's versioned release policy: version 1 still read, version 2's backends and per-dataset rules, and
strict parsing (a misspelt field is an error, never a silently weaker policy)."""

from __future__ import annotations

import pytest

from twofold.crypto.release_rules import Budget
from twofold.errors import AttestationError, ConfigError, PolicyError
from twofold.kbs.policy import load_policy, parse_policy
from twofold.kbs.verifiers import verifier_for

DIGEST = "ab" * 32


def _v2(**extra) -> dict:
    return {"version": 2, "backends": ["simulation"], "allow_simulation": True, "simulation_platform_keys": [],
            "measurements": {DIGEST: {"name": "t", "datasets": ["ds-1"], "expires": None}}, **extra}


def test_version_1_files_are_read_and_release_sealed_results_only():
    policy = parse_policy({"version": 1, "allow_simulation": True, "measurements": {}})
    assert policy.backends == ("simulation",) and policy.accepts_backend("simulation")
    assert policy.dataset_rule("ds-x").allows_release("sealed")
    assert not policy.dataset_rule("ds-x").allows_release("statistics")  # fails closed: nothing in the clear


def test_version_2_round_trips_through_a_file(tmp_path):
    policy = parse_policy(_v2(datasets={"ds-1": {"release": ["sealed"], "budget": {"epsilon": 0.5, "delta": 1e-6}},
                                        "*": {"release": ["sealed", "statistics"]}}))
    path = tmp_path / "policy.json"
    policy.save(path)
    again = load_policy(path)
    assert again.dataset_rule("ds-1").release == ("sealed",)
    assert again.dataset_rule("ds-1").budget == Budget(0.5, 1e-6)
    assert not again.dataset_rule("ds-1").allows_release("statistics")
    assert again.dataset_rule("ds-other").allows_release("statistics")  # the '*' rule
    assert again.measurements == policy.measurements


@pytest.mark.parametrize("bad, message", [
    ({"allow_simulaton": True}, "unknown policy field"),
    ({"backends": ["magic"]}, "backends"),
    ({"backends": []}, "backends"),
    ({"datasets": {"ds-1": {"release": ["everything"]}}}, "release modes"),
    ({"datasets": {"ds-1": {"release": ["sealed"], "extra": 1}}}, "may hold only algorithms, budget"),
    ({"datasets": {"ds-1": {"budget": {"epsilon": 0}}}}, "epsilon > 0"),
    ({"version": 4}, "version"),
    ({"datasets": {"ds-1": {"params": {"k": [5, 2]}}}}, "low <= high"),
    ({"datasets": {"ds-1": {"min_group_size": 0}}}, "positive integer"),
    ({"datasets": {"ds-1": {"columns": "age"}}}, "list of names"),
])
def test_malformed_policies_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy({**_v2(), **bad})


def test_a_backend_the_policy_does_not_list_is_refused():
    policy = parse_policy(_v2(backends=["sev-snp"]))
    with pytest.raises(AttestationError, match="not allowed by the policy"):
        verifier_for("simulation", policy)
    with pytest.raises(AttestationError, match="no platform rule"):
        verifier_for("sev-snp", policy)  # listed, but the policy says nothing of what a good platform is
    assert not parse_policy(_v2(allow_simulation=False)).accepts_backend("simulation")


def test_dataset_rules_round_trip_and_check_jobs():
    rule = {"release": ["sealed"], "algorithms": ["logreg"], "columns": ["age", "label"],
            "params": {"maxIter": [1, 50]}, "min_group_size": 25}
    policy = parse_policy({**_v2(), "version": 3, "datasets": {"ds-1": rule}})
    parsed = policy.dataset_rule("ds-1")
    assert parse_policy(policy.to_dict()).dataset_rule("ds-1") == parsed and parsed.min_group_size == 25
    parsed.check("sealed", "logreg", ["age", "label"], {"maxIter": 50})
    parsed.check(None, "logreg", ["age", ""], {})  # predictions: sealed for the owner, no release mode involved
    for release, algorithm, columns, params in (("statistics", "logreg", ["age"], {}),
                                                ("sealed", "kmeans", ["age"], {}),
                                                ("sealed", "logreg", ["bmi"], {}),
                                                ("sealed", "logreg", ["age"], {"maxIter": 51})):
        with pytest.raises(PolicyError):
            parsed.check(release, algorithm, columns, params)
    other = policy.dataset_rule("ds-other")  # no rule: sealed results only, any algorithm and column
    assert other.release == ("sealed",) and other.min_group_size == 10 and other.algorithms is None
    bounded = parse_policy({**_v2(), "datasets": {"*": {"params": {"k": [0, 2**53]}}}}).dataset_rule("ds-1")
    for value in (2**53 + 1, True, "3"):  # exact integer bounds; a bool or a string is not a number here
        with pytest.raises(PolicyError):
            bounded.check("sealed", "kmeans", [], {"k": value})
