"""What CI costs here: the README's main job (each time with an empty cache, as on a fresh machine), the
default and slow test suites (wall time per test file and the slowest tests), and the line coverage of
`tf_transfer/` each suite buys (subprocesses included), from the same code.

    python -m benchmarks.bench_ci [--repeats 3] [--suites default,slow] [--no-coverage] [--one-process] [--out F]

Timings come from plain runs; coverage from separate runs under `coverage run` (tracing slows Python), so
the figures a developer waits for are not inflated by the measurement of coverage.
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
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from benchmarks.common import spread

ROOT = Path(__file__).resolve().parents[1]
SUITES = {"default": [], "slow": ["-m", "slow"]}
SLOWEST = 30


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


def _timings(junit: Path) -> dict:
    """Per-file totals and the slowest tests from pytest's JUnit XML (setup and teardown included, so a
    session fixture's cost lands on the first test that asks for it)."""
    per_file: dict[str, float] = defaultdict(float)
    tests = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        seconds = float(case.get("time", 0))
        file = case.get("classname", "").split(".")[1] if "." in case.get("classname", "") else "?"
        per_file[f"tests/{file}.py"] += seconds
        tests.append({"test": f"{file}::{case.get('name')}", "seconds": round(seconds, 1)})
    tests.sort(key=lambda t: -t["seconds"])
    return {"per_file": {k: round(v, 1) for k, v in sorted(per_file.items(), key=lambda kv: -kv[1])},
            "slowest": tests[:SLOWEST], "tests": len(tests)}


def _pytest(args: list[str], workdir: Path, prefix: list[str] | None = None, env: dict | None = None) -> dict:
    """Run pytest with `args`; its wall time, summary and per-test timings."""
    junit = workdir / "junit.xml"
    cmd = [*(prefix or [sys.executable]), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    summary = next((line for line in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed)", line)),
                   "")
    reported = re.search(r" in ([\d.]+)s", summary)
    out = {"seconds": round(seconds, 1), "pytest_seconds": float(reported.group(1)) if reported else None,
           "summary": summary.strip("= "), "returncode": proc.returncode}
    if proc.returncode:
        out["failures"] = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:20]
    return {**out, **(_timings(junit) if junit.exists() else {})}


def suite(name: str, workdir: Path, extra: tuple[str, ...] = (), env: dict | None = None) -> dict:
    """One plain run of a suite, as configured in pyproject.toml (plus `extra` arguments)."""
    folder = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{name}-"))
    return _pytest([*SUITES[name], *extra], folder, env=env)


def _rcfile(workdir: Path) -> Path:
    rc = workdir / "coveragerc"
    # absolute paths: tests start subprocesses in other folders, whose data files must land here too
    rc.write_text(f"[run]\nsource = {ROOT / 'tf_transfer'}\nparallel = true\npatch = subprocess\n    _exit\n"
                  f"data_file = {workdir / '.coverage'}\n")
    return rc


def _covered(rc: Path, data_files: list[Path], workdir: Path) -> dict:
    combined = workdir / f"combined-{len(data_files)}"
    env = {**os.environ, "COVERAGE_FILE": str(combined)}
    subprocess.run([sys.executable, "-m", "coverage", "combine", "--keep", "-q", f"--rcfile={rc}",
                    *map(str, data_files)], check=True, cwd=ROOT, env=env)
    report = workdir / "coverage.json"
    subprocess.run([sys.executable, "-m", "coverage", "json", "-q", f"--rcfile={rc}", f"--data-file={combined}",
                    "-o", str(report)], check=True, cwd=ROOT)
    totals = json.loads(report.read_text())["totals"]
    return {"percent": round(totals["percent_covered"], 2), "lines": totals["num_statements"],
            "covered": totals["covered_lines"]}


def coverage(names: list[str], workdir: Path) -> dict:
    """Line coverage of tf_transfer/ for each suite in turn and for the suites together."""
    rc = _rcfile(workdir)
    runs, files, out = {}, [], {}
    for i, name in enumerate(names):
        folder = workdir / f"cov-{name}"
        folder.mkdir()
        before = set(workdir.glob(".coverage.*"))
        # tracing slows the suite down: its time budget is for plain runs
        runs[name] = _pytest([*SUITES[name], "-o", "default_suite_budget_seconds=0"], folder,
                             prefix=[sys.executable, "-m", "coverage", "run", f"--rcfile={rc}"])
        files += sorted(set(workdir.glob(".coverage.*")) - before)
        out["+".join(names[: i + 1])] = _covered(rc, list(files), workdir)
    return {"runs": {k: {"seconds": v["seconds"], "summary": v["summary"], "returncode": v["returncode"]}
                     for k, v in runs.items()}, **out}


def run(repeats: int = 3, suites: tuple[str, ...] = ("default", "slow"), with_coverage: bool = True,
        one_process: bool = False) -> dict:
    """The suites run as CI runs them: one after the other, sharing their built fixtures (a test store)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = {"TF_TRANSFER_TEST_STORE": str(work / "store")}
        out = {"main_job_seconds": main_job(repeats) if repeats else None,
               "suites": {name: suite(name, work, env=store) for name in suites}}
        if one_process:  # the same default suite without pytest-xdist (and without a store), for the ratio
            out["one_process"] = {"default": suite("default", work, ("-n", "0"))}
        if with_coverage:
            cov = work / "coverage"
            cov.mkdir()
            out["coverage"] = coverage(list(suites), cov)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ci")
    parser.add_argument("--repeats", type=int, default=3, help="main-job repeats (0: skip the main job)")
    parser.add_argument("--suites", default="default,slow", help="comma list of default, slow")
    parser.add_argument("--no-coverage", action="store_true")
    parser.add_argument("--one-process", action="store_true",
                        help="also time the default suite in one process (-n 0), against the configured workers")
    parser.add_argument("--out", type=Path, help="write the JSON here as well")
    args = parser.parse_args()
    names = tuple(n for n in args.suites.split(",") if n)
    if set(names) - set(SUITES):
        parser.error(f"--suites: expected some of {', '.join(SUITES)}, got {args.suites!r}")
    result = json.dumps(run(args.repeats, names, not args.no_coverage, args.one_process), indent=2)
    if args.out:
        args.out.write_text(result + "\n")
    print(result)
