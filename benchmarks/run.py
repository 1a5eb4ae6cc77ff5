"""Run the benchmarks and write BENCHMARKS.md (and the README's measured figures) from their results.

    python -m benchmarks.run                         # every benchmark, then both files
    python -m benchmarks.run --only speed,serving    # some benchmarks; the others keep their last results
    python -m benchmarks.run --render                # only rewrite the files from benchmarks/results/

Each benchmark's result is kept in benchmarks/results/<name>.json with the commit, date and machine
it was measured on; every figure in BENCHMARKS.md and in the README's measured spots comes from those
files, written by this script. Ratios compare candidates measured in turns in the same run, with
min/median/max over the repeats where they move.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import render

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _measure(name: str, workdir: Path):
    from benchmarks import (
        bench_adapt,
        bench_ci,
        bench_distribute,
        bench_finetune,
        bench_frozen_phase,
        bench_input_pipeline,
        bench_multitask,
        bench_pretrain,
        bench_reliability,
        bench_serving,
        bench_speed,
        bench_text,
        bench_transfer,
        check_keras3,
    )

    return {
        "input_pipeline": lambda: bench_input_pipeline.run(workdir),
        "frozen_phase": lambda: bench_frozen_phase.run(workdir),
        "serving": lambda: bench_serving.run(workdir),
        "transfer": lambda: bench_transfer.run(workdir),
        "pretrain": lambda: bench_pretrain.run(workdir),
        "multitask": lambda: bench_multitask.run(workdir),
        "text": lambda: bench_text.run(workdir),
        "adapt": lambda: bench_adapt.run(workdir),
        "distribute": lambda: bench_distribute.run(workdir),
        "speed": lambda: bench_speed.run(workdir),
        "finetune": lambda: bench_finetune.run(workdir),
        "reliability": lambda: bench_reliability.run(workdir),
        "keras3": check_keras3.run,
        "ci": bench_ci.run,
    }[name]()


def _stamp() -> dict:
    import tensorflow as tf

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "tf_transfer"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    gpu = tf.config.list_physical_devices("GPU")
    return {"commit": commit.stdout.strip() + ("+changes" if dirty else ""), "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {'GPU' if gpu else 'no GPU'}",
            "tensorflow": tf.__version__}


def measure(names: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            result = _measure(name, Path(tmp))
        record = {**_stamp(), "minutes": round((time.monotonic() - started) / 60, 1), "result": result}
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


def adopt(name: str, path: Path, commit: str, note: str = "") -> None:
    """Record the output of a benchmark script run on its own (python -m benchmarks.<script> --out PATH)
    as the result of `name`, stamped with the commit it ran on."""
    started = Path(path).stat().st_mtime
    record = {**_stamp(), "commit": commit, "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
              "minutes": None, "note": note, "result": json.loads(Path(path).read_text())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


def load() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def write_files(results: dict[str, dict]) -> None:
    (ROOT / "BENCHMARKS.md").write_text(render.benchmarks_md(results))
    readme = ROOT / "README.md"
    text = readme.read_text()
    for key, value in render.readme_figures(results).items():
        text = re.sub(rf"<!-- bench:{key} -->.*?<!-- /bench -->", f"<!-- bench:{key} -->{value}<!-- /bench -->",
                      text, flags=re.S)
    readme.write_text(text)


SECTIONS = ["input_pipeline", "frozen_phase", "serving", "transfer", "pretrain", "multitask", "text", "adapt",
            "distribute",
            "speed", "finetune",
            "reliability", "keras3", "ci"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--render", action="store_true", help="only rewrite the files from the saved results")
    parser.add_argument("--adopt", nargs=3, metavar=("NAME", "JSON", "COMMIT"),
                        help="record a benchmark script's own --out JSON (run at COMMIT) as NAME's result")
    parser.add_argument("--note", default="", help="with --adopt: how it was run (e.g. pinned to one core)")
    args = parser.parse_args()
    if args.adopt:
        adopt(args.adopt[0], Path(args.adopt[1]), args.adopt[2], args.note)
        args.render = True
    names = [n for n in args.only.split(",") if n] or SECTIONS
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    if not args.render:
        measure(names)
    write_files(load())
    print((ROOT / "BENCHMARKS.md").read_text())


if __name__ == "__main__":
    main()
