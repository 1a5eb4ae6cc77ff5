"""Try multi-worker training on one machine: start N worker processes with a generated TF_CONFIG on
loopback ports, each running ``python -m tf_transfer.train`` with the given flags.

    python -m tf_transfer.launch --workers 2 -- --data FOLDER --name NAME [train flags...]

Worker 0 is the chief: it writes the run folder and the export; all workers train together under
MultiWorkerMirroredStrategy. Output of worker 0 is shown; every worker's log is in the run folder.
For real clusters set TF_CONFIG on each machine instead (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(n: int) -> list[dict]:
    workers = [f"127.0.0.1:{p}" for p in free_ports(n)]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}} for i in range(n)]


def launch(workers: int, train_args: Sequence[str], timeout: float | None = None) -> int:
    """Run the workers to completion; returns the first non-zero exit code (0 if all succeeded)."""
    procs = []
    for i, tf_config in enumerate(tf_configs(workers)):
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2"}
        out = None if i == 0 else subprocess.DEVNULL
        procs.append(subprocess.Popen([sys.executable, "-m", "tf_transfer.train", "--strategy", "multiworker",
                                       *train_args], env=env, stdout=out, stderr=out))
    deadline = time.monotonic() + timeout if timeout else None
    codes: list[int | None] = [None] * workers
    try:
        while any(c is None for c in codes):
            for i, p in enumerate(procs):
                codes[i] = p.poll()
            failed = [c for c in codes if c not in (None, 0)]
            if failed or (deadline and time.monotonic() > deadline):
                break  # a worker died: the others would wait for it forever
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c != 0), 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="number of local worker processes")
    parser.add_argument("--timeout", type=float, help="stop every worker after this many seconds")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="flags for tf_transfer.train (after --)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: expected at least 1, got {args.workers}")
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    return launch(args.workers, train_args, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
