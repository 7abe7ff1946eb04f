"""What is measured is exactly what runs: the enclave's TCB (partitioned mode) and a whole-mode executor's code.

Each comparison runs in a fresh interpreter started as the enclave is (``-I -B``), so nothing this test process
imported counts. Both directions are checked: a loaded file that is not measured is code the evidence hides; a
measured file that is not loaded makes the measurement depend on code that never runs (how ``if TYPE_CHECKING:``
imports once inflated it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from twofold.data import EncryptedDataset
from twofold.enclave.measure import PACKAGE_ROOT, imports_in_source, tcb_files, twofold_imports, whole_files

from ..conftest import PASSPHRASE

# The enclave process runs ``python -I -B -m twofold.enclave``; importing that module as a module (not as
# ``__main__``) loads the same code without starting a server. Before it existed, the runtime was the entry.
ENCLAVE_ENTRY = ("twofold.enclave.__main__" if (PACKAGE_ROOT / "enclave" / "__main__.py").is_file()
                 else "twofold.enclave.runtime")
WHOLE_ENTRY = "twofold.spark.whole"  # what an executor's Python worker imports to run _decrypt_partitions

# Measured files that a process loads only when a function runs (a function-level import), per mode. None today;
# add one only with a comment naming the function that imports it.
LAZY_ONLY: dict[str, set[str]] = {"partitioned": set(), "whole": set()}

# Prints the twofold files loaded after ``entry`` (snapshot taken before anything else is imported), the measured
# files, and what twofold.enclave.loaded reports as unmeasured, all relative to PACKAGE_ROOT. The checker itself
# counts as measured there: the enclave measures and loads it (the comparison above shows that), a whole-mode
# executor does not run it, and only this probe imports it.
_PROBE = """
import importlib, json, sys
from pathlib import Path
importlib.import_module(sys.argv[1])
files = [m.__file__ for n, m in sys.modules.copy().items()
         if (n == "twofold" or n.startswith("twofold.")) and getattr(m, "__file__", None)]
from twofold.enclave import measure
from twofold.enclave import loaded
root = measure.PACKAGE_ROOT
measured = getattr(measure, sys.argv[2])()
print(json.dumps({"loaded": sorted(Path(f).resolve().relative_to(root).as_posix() for f in files),
                  "measured": sorted(p.relative_to(root).as_posix() for p in measured),
                  "unmeasured": loaded.unmeasured([*measured, Path(loaded.__file__)])}))
"""


def probe(entry: str, files_function: str) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-I", "-B", "-c", _PROBE, entry, files_function],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rel(paths: list[Path]) -> set[str]:
    return {p.relative_to(PACKAGE_ROOT).as_posix() for p in paths}


def lazy_twofold_imports(files: set[str]) -> dict[str, set[str]]:
    """For each file (relative to PACKAGE_ROOT), the twofold modules it imports inside a function body."""
    found: dict[str, set[str]] = {}
    for name in sorted(files):
        tree = ast.parse((PACKAGE_ROOT / name).read_text("utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    modules = {alias.name for alias in node.names if alias.name.startswith("twofold")}
                elif isinstance(node, ast.ImportFrom):
                    relative = node.level or (node.module or "").startswith("twofold")
                    modules = {"." * node.level + (node.module or "")} if relative else set()
                else:
                    modules = set()
                if modules:
                    found.setdefault(name, set()).update(modules)
    return found


@pytest.mark.parametrize(("mode", "entry", "files_function"), [
    ("partitioned", ENCLAVE_ENTRY, "tcb_files"),
    ("whole", WHOLE_ENTRY, "whole_files"),
])
def test_measured_files_are_the_loaded_files(mode, entry, files_function):
    seen = probe(entry, files_function)
    loaded, measured = set(seen["loaded"]), set(seen["measured"])
    assert loaded - measured == set(), f"{mode}: loaded but not measured"
    assert measured - loaded == LAZY_ONLY[mode], f"{mode}: measured but never loaded at start"
    assert seen["unmeasured"] == [], f"{mode}: the runtime check would refuse this process"


@pytest.mark.parametrize(("mode", "files"), [("partitioned", tcb_files), ("whole", whole_files)])
def test_no_measured_file_imports_twofold_lazily_unless_declared(mode, files):
    # LAZY_ONLY is the complete list: a new function-level import in measured code must be declared there.
    lazy = lazy_twofold_imports(rel(files()))
    assert lazy == {}, f"{mode}: function-level twofold imports {lazy}; declare what they load in LAZY_ONLY"


def test_whole_mode_executor_decrypts_without_loading_unmeasured_code(keystore, tmp_path):
    # _decrypt_partitions as an executor runs it, except that the owner's keystore stands in for the attested
    # broker session (a running broker and Spark are not needed to see what decrypting imports).
    table = pa.table({"f1": [1.0, 2.0, 3.0], "f2": [4, 5, 6], "label": [0, 1, 0]})
    dataset = EncryptedDataset.write(table, tmp_path / "ds", keystore, label="label", rows_per_file=2)
    code = """
import json, os, sys
from pathlib import Path
import pyarrow as pa
import twofold.spark.whole as whole
def files():
    return sorted(Path(m.__file__).resolve().relative_to(root).as_posix() for n, m in sys.modules.copy().items()
                  if (n == "twofold" or n.startswith("twofold.")) and getattr(m, "__file__", None))
from twofold.enclave.measure import PACKAGE_ROOT as root
at_import = files()
from twofold.keys.keystore import Keystore
keys = Keystore.open(sys.argv[1], sys.argv[2])
whole.attested_session = lambda url: keys
indices = pa.record_batch({"index": pa.array([0, 1], pa.int32())})
rows = sum(b.num_rows for b in whole._decrypt_partitions(sys.argv[3], "unused", None, None, iter([indices])))
assembly = whole._Assembly(["f1", "f2"], "features", ["label"])
assembled = list(whole._decrypt_partitions(sys.argv[3], "unused", None, assembly, iter([indices])))
print(json.dumps({"at_import": at_import, "after": files(), "rows": rows,
                  "columns": assembled[0].schema.names}), flush=True)
os._exit(0)  # pyarrow's Parquet threads may abort at interpreter teardown (apache/arrow#34314); the check is done
"""
    result = subprocess.run([sys.executable, "-I", "-B", "-c", code, str(keystore.directory), PASSPHRASE,
                             str(dataset.path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["rows"] == 3 and seen["columns"] == ["features", "label"]
    measured = rel(whole_files())
    assert set(seen["at_import"]) == measured
    assert set(seen["after"]) - measured == set(), "decrypting loaded twofold code the whole measurement omits"


# -- the import walk itself ---------------------------------------------------------------------------------


def test_type_checking_imports_are_skipped_and_function_imports_kept():
    source = """
from typing import TYPE_CHECKING
import typing
import typing as t

if TYPE_CHECKING:
    from twofold.hidden_a import A
else:
    from twofold.runs_in_else import B
if typing.TYPE_CHECKING:
    import twofold.hidden_b
if t.TYPE_CHECKING:
    from . import hidden_c
if not TYPE_CHECKING:
    import twofold.runs_when_not_checking

class Holder:
    if TYPE_CHECKING:
        from twofold.hidden_d import D

def lazy():
    from twofold.lazy_module import helper
    if TYPE_CHECKING:
        from twofold.hidden_e import E
    return helper

from .sibling import thing
"""
    found = imports_in_source(source, "twofold.pkg")
    assert {"twofold.runs_in_else", "twofold.runs_when_not_checking", "twofold.lazy_module",
            "twofold.pkg.sibling"} <= found
    assert not {m for m in found if "hidden" in m}, found


def test_only_typing_type_checking_counts_as_never_true():
    # A module's own TYPE_CHECKING (or another module's) may be true at run time: its imports are measured.
    source = """
import other
TYPE_CHECKING = True
if TYPE_CHECKING:
    import twofold.runs_a
if other.TYPE_CHECKING:
    import twofold.runs_b
"""
    assert {"twofold.runs_a", "twofold.runs_b"} <= imports_in_source(source, "twofold")


def test_the_spark_package_type_checking_block_is_not_measured():
    # spark/__init__.py names its submodules under `if TYPE_CHECKING:` and loads them on first use; the whole
    # measurement used to include the estimators (and through them every enclave kernel) because of it.
    imports = twofold_imports(PACKAGE_ROOT / "spark" / "__init__.py")
    assert not {m for m in imports if m.startswith("twofold.spark.")}, imports
    files = rel(whole_files())
    assert "spark/whole.py" in files and "spark/estimators.py" not in files
    assert not {f for f in files if f.startswith("enclave/kernels/")}, files
