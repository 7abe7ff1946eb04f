"""The one Spark algorithm catalog agrees with the kernels, the estimators of both modes and itself (no JVM)."""

from __future__ import annotations

import inspect

import pytest
from pyspark.ml.param import Param

from twofold.enclave.kernels.base import ALGORITHMS as KERNELS
from twofold.errors import ConfigError
from twofold.spark import catalog

SPECS = list(catalog.ALGORITHMS.values())
SHARED = {"inputCols": None, "predictionCol": "prediction", "release": "statistics", "enclaveSocket": None,
          "kbsUrl": None, "brokerIdentity": None}


def test_catalog_and_kernel_registry_agree():
    import twofold.enclave.kernels  # noqa: F401 - registers the kernels

    assert {spec.kernel for spec in SPECS} == set(KERNELS)
    for spec in SPECS:
        assert KERNELS[spec.kernel].uses_label == spec.uses_label, spec.name


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_partitioned_estimator_takes_exactly_the_catalog_params(spec):
    cls = spec.partitioned_class()
    label = {"labelCol": "label"} if spec.uses_label else {}
    signature = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    assert signature == {**spec.defaults(), **label, **SHARED}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in inspect.signature(cls).parameters.values())
    estimator = cls()
    assert {name: estimator.getOrDefault(name) for name in [*spec.param_names, *label]} == {**spec.defaults(), **label}
    hyper = {"maxIter", "tol", "regParam", "elasticNetParam", "fitIntercept", "standardization", "k", "seed",
             "smoothing", "modelType"}
    assert {p.name for p in estimator.params} & hyper == set(spec.param_names)  # no parameter it would ignore
    assert cls(**spec.defaults()).getRelease() == "statistics"


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_mllib_estimator_of_whole_mode_takes_the_catalog_params(spec):
    mllib = spec.mllib_class()
    assert all(isinstance(getattr(mllib, name, None), Param) for name in spec.param_names)
    assert hasattr(spec.mllib_model_class(), "load")
    assert isinstance(getattr(mllib, "labelCol", None), Param) == spec.uses_label


def test_check_refuses_converts_and_spells():
    linreg = catalog.get("linreg")
    with pytest.raises(ConfigError, match=r"linreg does not take --max-iter, --tol \(it takes --reg-param"):
        linreg.check({"maxIter": 5, "tol": 1e-3, "regParam": 0.1}, spell=catalog.flag)
    assert linreg.check({"regParam": 1}) == {"regParam": 1.0}
    with pytest.raises(ConfigError, match="modelType must be multinomial or gaussian"):
        catalog.get("naive_bayes").check({"modelType": "bernoulli"})
    with pytest.raises(ConfigError, match="k must be int"):
        catalog.get("pca").check({"k": True})
    with pytest.raises(ConfigError, match="unknown algorithm 'gbt'"):
        catalog.get("gbt")
    assert catalog.flag("elasticNetParam") == "--elastic-net-param"


def test_a_parameter_has_one_type_across_algorithms():
    for name, takers in catalog.by_param().items():
        assert len({(p.type, p.choices) for _, p in takers}) == 1, name
