"""`twofold demo` (what `make demo` runs) end to end, leaving no process and no file behind."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import run_cli


def _twofold_services() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "twofold (kbs|enclave|he) serve"], capture_output=True, text=True)
    return set(out.stdout.split())


@pytest.mark.slow
def test_demo_tells_the_whole_story_and_cleans_up(tmp_path):
    before = _twofold_services()
    (tmp_path / "tmp").mkdir()
    result = run_cli("demo", "--he-key-bits", "1024", env={"TWOFOLD_HOME": str(tmp_path / "home"),
                                                            "TMPDIR": str(tmp_path / "tmp"), "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for step in ("Owner keys created", "Dataset encrypted", "Key broker and enclave started", "SIMULATION",
                 "vanilla MLlib", "Two-server naive Bayes", "MU<->SU"):
        assert step in out, step
    assert "Encrypted PyTorch training" in out
    assert _twofold_services() <= before  # every service it started was stopped
    left = [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor_")]  # torch's cache
    assert not left  # the demo's own files were removed
