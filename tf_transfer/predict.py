"""Predict classes for image files with an exported model, in this process or through a server.

    python -m tf_transfer.predict saved_models/NAME[/VERSION] images_or_folders...
    python -m tf_transfer.predict --server http://localhost:8501 --model NAME images_or_folders...
    python -m tf_transfer.predict --server grpc://localhost:8500 --model NAME images_or_folders...

Prints the top classes and scores per image (per task for a model with several heads: a multi-label
task's classes over their thresholds); --output writes them as CSV (path,[task,]rank,class,score). Unreadable images are
reported and skipped; folders are processed in batches with a progress bar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tf_transfer import cli, folders
from tf_transfer.errors import DataError


def _progress(done: int, total: int) -> None:
    print(f"\r{done}/{total} images [{'#' * (30 * done // max(total, 1)):<30}]", end="", file=sys.stderr,
          flush=True)
    if done == total:
        print(file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="an export folder (unless --server), then image files or folders")
    parser.add_argument("--server", help="a model server: http(s)://host:port (REST) or grpc://host:port")
    parser.add_argument("--model", help="with --server: the model name")
    parser.add_argument("--version", type=int, help="with --server: a model version (default: latest)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=3, help="classes to print per image")
    parser.add_argument("--timeout", type=float, default=30.0, help="with --server: seconds per request")
    parser.add_argument("--output", metavar="CSV", help="also write path,rank,class,score rows to this file")
    args = parser.parse_args(argv)
    if args.server and not args.model:
        parser.error("--server needs --model NAME")
    return cli.run_command(lambda: _predict(args))


def _predict(args) -> int:
    cli.quiet_tensorflow()
    from tf_transfer.serving import clients

    if args.server:
        model = clients.client_for(args.server, args.model, version=args.version, timeout=args.timeout)
        paths = clients.expand_inputs(args.inputs)
    else:
        model = clients.LocalModel(args.inputs[0])
        paths = clients.expand_inputs(args.inputs[1:])
    if not paths:
        raise DataError("no image files given; expected image files or folders after the model")
    results = clients.predict_files(model, paths, args.batch_size,
                                    progress=_progress if len(paths) > args.batch_size else None)
    rows = []
    for r in results:
        if r.error:
            print(f"{r.path}: skipped ({r.error})", file=sys.stderr)
            continue
        print(f"{r.path}: {r.prediction.describe(args.top_k)}")
        rows.extend([str(r.path), *([task] if r.prediction.tasks else []), rank, c, f"{s:.6f}"]
                    for task, rank, c, s in r.prediction.rows(args.top_k))
    skipped = sum(1 for r in results if r.error)
    if skipped:
        print(f"{skipped} of {len(results)} images could not be read and were skipped", file=sys.stderr)
    if args.output:
        named = any(r.prediction.tasks for r in results if r.prediction)
        folders.write_csv(args.output, [["path", *(["task"] if named else []), "rank", "class", "score"], *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
