"""The enclave refuses to run twofold code that was not measured (twofold.enclave.loaded).

The attacks run in a fresh interpreter that has imported what the enclave imports, so the baseline is clean
and each case's report must name exactly the module it planted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from twofold.enclave.loaded import check_loaded, loaded_twofold_files, unmeasured
from twofold.enclave.measure import PACKAGE_ROOT
from twofold.errors import AttestationError

ENCLAVE_ENTRY = ("twofold.enclave.__main__" if (PACKAGE_ROOT / "enclave" / "__main__.py").is_file()
                 else "twofold.enclave.runtime")
SECRET = "SECRET-CONTENT-7f3a"  # written into planted files: an error may name a module, never show its code

_ATTACKS = """
import importlib, importlib.machinery, importlib.util, json, py_compile, shutil, sys, types
from pathlib import Path

importlib.import_module(sys.argv[1])
tmp = Path(sys.argv[2])
from twofold.enclave.loaded import check_loaded, unmeasured
from twofold.enclave.measure import PACKAGE_ROOT, tcb_files
from twofold.errors import AttestationError

measured = tcb_files()
out = {"baseline": unmeasured(measured)}


def report(case, plant, files=measured):
    saved = dict(sys.modules)
    try:
        plant()
        out[case] = unmeasured(files)
        try:
            check_loaded(files)
            out[case + "/error"] = None
        except AttestationError as exc:
            out[case + "/error"] = str(exc)
    finally:
        for key in set(sys.modules) - set(saved):
            del sys.modules[key]
        sys.modules.update(saved)


def planted_file(name):
    path = tmp / name
    path.write_text("VALUE = {!r}\\n".format(sys.argv[3]))
    return path


def evil():  # a module object whose file is outside the package
    module = types.ModuleType("twofold.evil")
    module.__file__ = str(planted_file("evil.py"))
    sys.modules["twofold.evil"] = module


def shadow():  # a real source import of twofold.framing from a copy in another directory
    copy = tmp / "shadow" / "twofold" / "framing.py"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACKAGE_ROOT / "framing.py", copy)
    spec = importlib.util.spec_from_file_location("twofold.framing", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["twofold.framing"] = module


def sourceless(forge_origin):
    def plant():  # twofold.framing run from bytecode alone (optionally claiming the measured .py as its file)
        pyc = tmp / ("forged.pyc" if forge_origin else "framing.pyc")
        py_compile.compile(str(PACKAGE_ROOT / "framing.py"), cfile=str(pyc), doraise=True)
        loader = importlib.machinery.SourcelessFileLoader("twofold.framing", str(pyc))
        spec = importlib.util.spec_from_file_location("twofold.framing", str(pyc), loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        if forge_origin:
            spec.origin = module.__file__ = str(PACKAGE_ROOT / "framing.py")
        sys.modules["twofold.framing"] = module
    return plant


def no_file():  # a module built in memory, and a namespace package
    sys.modules["twofold.memory"] = types.ModuleType("twofold.memory")
    namespace = importlib.machinery.ModuleSpec("twofold.namespace", None, is_package=True)
    namespace.submodule_search_locations = [str(tmp)]
    sys.modules["twofold.namespace"] = importlib.util.module_from_spec(namespace)


def renamed():  # a measured file loaded under another module's name
    spec = importlib.util.spec_from_file_location("twofold.enclave.cache", PACKAGE_ROOT / "framing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["twofold.enclave.cache"] = module


def file_disagrees():  # the measured source, whose __file__ then names another file: which one ran is unclear
    spec = importlib.util.spec_from_file_location("twofold.framing", PACKAGE_ROOT / "framing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__file__ = str(planted_file("framing.py"))
    sys.modules["twofold.framing"] = module


def main_module():  # `python -m twofold.enclave` runs its entry as __main__; one from elsewhere is caught
    spec = importlib.util.spec_from_file_location("twofold.enclave.__main__", planted_file("main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["__main__"] = module


report("evil", evil)
report("shadow", shadow)
report("shadow_measured_path", shadow, [*measured, tmp / "shadow" / "twofold" / "framing.py"])
report("bytecode", sourceless(False))
report("bytecode_forged_origin", sourceless(True))
report("no_file", no_file)
report("renamed", renamed)
report("file_disagrees", file_disagrees)
report("__main__", main_module)
report("missing_from_measured", lambda: None, [p for p in measured if p != PACKAGE_ROOT / "errors.py"])
out["after"] = unmeasured(measured)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def attacks(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("attacks")
    result = subprocess.run([sys.executable, "-I", "-B", "-c", _ATTACKS, ENCLAVE_ENTRY, str(tmp), SECRET],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_enclave_as_started_loads_only_measured_code(attacks):
    assert attacks["baseline"] == [] and attacks["after"] == []


@pytest.mark.parametrize(("case", "names"), [
    ("evil", ["twofold.evil"]),  # outside PACKAGE_ROOT, not imported by the import system
    ("shadow", ["twofold.framing"]),  # the same code, from another directory
    ("shadow_measured_path", ["twofold.framing"]),  # ... even if that path were measured
    ("bytecode", ["twofold.framing"]),  # a .pyc without its source
    ("bytecode_forged_origin", ["twofold.framing"]),  # ... that claims the measured .py as its file
    ("no_file", ["twofold.memory", "twofold.namespace"]),
    ("renamed", ["twofold.enclave.cache"]),  # a measured file, run as a module it is not
    ("file_disagrees", ["twofold.framing"]),
    ("__main__", ["__main__"]),
    ("missing_from_measured", ["twofold.errors"]),
])
def test_unmeasured_names_each_planted_module(attacks, case, names):
    assert attacks[case] == names
    message = attacks[case + "/error"]
    assert message is not None and all(name in message for name in names)
    assert SECRET not in message and "/" not in message  # names only: no contents, no paths


def test_check_loaded_raises_attestation_error_in_process(monkeypatch, tmp_path):
    # This test process loads more of twofold than the enclave does, all of it from the package's sources.
    everything = list(PACKAGE_ROOT.rglob("*.py"))
    assert unmeasured(everything) == []
    check_loaded(everything)
    assert PACKAGE_ROOT / "enclave" / "loaded.py" in loaded_twofold_files()
    planted = tmp_path / "evil.py"
    planted.write_text(f"VALUE = {SECRET!r}\n")
    module = type(sys)("twofold.evil")
    module.__file__ = str(planted)
    monkeypatch.setitem(sys.modules, "twofold.evil", module)
    assert planted.resolve() in loaded_twofold_files()
    with pytest.raises(AttestationError, match=r"twofold\.evil") as caught:
        check_loaded([*everything, planted])
    assert SECRET not in str(caught.value)


def test_measured_paths_may_be_given_unresolved(tmp_path):
    link = tmp_path / "src"
    link.symlink_to(PACKAGE_ROOT)
    assert unmeasured([link / p.relative_to(PACKAGE_ROOT) for p in PACKAGE_ROOT.rglob("*.py")]) == []
    assert unmeasured([Path("does-not-exist.py")]) != []
