"""How long the README's two set-up commands take here: the main job (each time with an empty cache, as
on a fresh machine) and the default test suite.

    python -m benchmarks.bench_ci [--repeats 3] [--no-tests]     # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import spread

ROOT = Path(__file__).resolve().parents[1]


def main_job(repeats: int = 3) -> dict:
    seconds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_TRANSFER_CACHE": tmp}
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "tf_transfer.train", "--runs-dir", f"{tmp}/runs", "--export-dir",
                            f"{tmp}/saved_models"], check=True, cwd=ROOT, env=env, capture_output=True)
            seconds.append(time.monotonic() - started)
    return spread(seconds)


def test_suite() -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    seconds = time.monotonic() - started
    summary = next((line for line in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed)", line)),
                   "")
    return {"seconds": seconds, "summary": summary.strip("= "), "returncode": proc.returncode}


def run(repeats: int = 3, tests: bool = True) -> dict:
    return {"main_job_seconds": main_job(repeats), "test_suite": test_suite() if tests else None}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-tests", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.repeats, not args.no_tests), indent=2))
