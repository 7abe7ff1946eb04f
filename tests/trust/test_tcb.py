from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from twofold.enclave.measure import PACKAGE_ROOT, current_measurement, tcb_files, tcb_report

from ..conftest import run_cli

ALLOWED_THIRD_PARTY = {"numpy", "pyarrow", "msgpack", "cryptography"}


def test_tcb_command_reports_measurement_and_size():
    result = run_cli("tcb", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["measurement"] == current_measurement() and len(report["measurement"]) == 64
    assert 0 < report["tcb_lines"] <= report["total_lines"] / 4, report
    assert "TCB" in run_cli("tcb").stdout


def test_enclave_imports_only_crypto_errors_and_numeric_libraries():
    stdlib = set(sys.stdlib_module_names)
    for path in (PACKAGE_ROOT / "enclave").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "twofold":
                    assert name == "twofold" or name.startswith(("twofold.enclave", "twofold.crypto",
                                                                  "twofold.errors", "twofold.framing")), (path, name)
                else:
                    assert top in stdlib or top in ALLOWED_THIRD_PARTY or top == "__future__", (path, name)


def test_tcb_files_are_exactly_what_the_enclave_loads():
    code = ("import sys, twofold.enclave.runtime; "
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('twofold'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    files = {p.relative_to(PACKAGE_ROOT).as_posix() for p in tcb_files()}
    for module in loaded:
        parts = module.split(".")[1:]
        candidates = {"/".join([*parts, "__init__.py"]) if parts else "__init__.py", "/".join(parts) + ".py"}
        assert files & candidates, f"{module} is loaded by the enclave but not measured"


def test_changing_any_trusted_file_changes_the_measurement(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE_ROOT, copy / "twofold")
    code = "from twofold.enclave.measure import current_measurement; print(current_measurement())"

    def measured() -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(copy)}, cwd=tmp_path).stdout.strip()

    assert measured() == current_measurement()
    target = copy / "twofold" / "crypto" / "hpke_seal.py"
    target.write_text(target.read_text() + "\n# patched\n")
    assert measured() != current_measurement()
    untrusted = copy / "twofold" / "cli" / "keys.py"  # outside the TCB: no effect
    target.write_text(target.read_text().replace("\n# patched\n", ""))
    untrusted.write_text(untrusted.read_text() + "\n# patched\n")
    assert measured() == current_measurement()


def test_report_counts_lines():
    report = tcb_report()
    assert report.files[0] == "__init__.py" and "errors.py" in report.files
    assert Path(PACKAGE_ROOT / "cli" / "keys.py").relative_to(PACKAGE_ROOT).as_posix() not in report.files
