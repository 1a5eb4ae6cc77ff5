"""The default suite's time budget: passing it fails the README's test command (and only that command)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from .conftest import ROOT


def _project(tmp_path, sleep: float):
    """A project with this suite's conftest and pytest settings, a budget of 1 s and one test."""
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_one.py").write_text(f"import time\n\n\ndef test_one():\n    time.sleep({sleep})\n")
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
                                             "addopts = \"-m 'not slow'\"\ndefault_suite_budget_seconds = 1\n")


def _pytest(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not a worker of this session
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)


def test_the_default_suite_fails_past_its_budget_and_one_file_does_not(tmp_path):
    _project(tmp_path, sleep=1.5)
    over = _pytest(tmp_path)
    assert over.returncode == 1 and "FAILED (time budget): the default suite took" in over.stdout, over.stdout
    assert "1 passed" in over.stdout
    one_file = _pytest(tmp_path, "tests/test_one.py")  # a developer running one file is not held to it
    assert one_file.returncode == 0, one_file.stdout


def test_a_suite_within_its_budget_passes(tmp_path):
    _project(tmp_path, sleep=0)
    assert _pytest(tmp_path).returncode == 0


def test_the_budget_is_written_once_and_is_five_minutes_plus_a_fifth():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.findall(r"^default_suite_budget_seconds = (\d+)$", text, re.M) == ["360"]
