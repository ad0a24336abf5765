"""Every script in ``bench/`` answers ``--help`` and runs in both documented
forms: ``python bench/X.py`` from anywhere, ``python -m bench.X`` from the
repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    path.stem for path in (ROOT / "bench").glob("*.py") if path.stem != "__init__"
)


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_prints_its_usage(name: str, tmp_path: Path) -> None:
    outcome = _run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"], tmp_path
    )

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.startswith(f"usage: {name}.py")


@pytest.mark.parametrize("name", SCRIPTS)
def test_module_prints_its_usage(name: str) -> None:
    outcome = _run([sys.executable, "-m", f"bench.{name}", "--help"], ROOT)

    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.startswith(f"usage: {name}.py")
