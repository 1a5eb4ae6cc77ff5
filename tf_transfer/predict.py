"""Predict classes for image files with an exported model, in this process or through a server.

    python -m tf_transfer.predict saved_models/NAME[/VERSION] images_or_folders...
    python -m tf_transfer.predict --server http://localhost:8501 --model NAME images_or_folders...
    python -m tf_transfer.predict --server grpc://localhost:8500 --model NAME images_or_folders...

Prints the top classes and scores per image; --output writes them as CSV. Unreadable images are
reported and skipped; folders are processed in batches with a progress bar.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence


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
    from tf_transfer import cli

    cli.quiet_tensorflow()
    from tf_transfer import export, serving

    if args.server:
        if not args.model:
            cli.fail("--server needs --model NAME")
        model = serving.client_for(args.server, args.model, version=args.version, timeout=args.timeout)
        paths = serving.expand_inputs(args.inputs)
    else:
        try:
            model = serving.LocalModel(args.inputs[0])
        except export.ExportError as e:
            cli.fail(str(e))
        paths = serving.expand_inputs(args.inputs[1:])
    if not paths:
        cli.fail("no image files given")
    try:
        results = serving.predict_files(model, paths, args.batch_size,
                                        progress=_progress if len(paths) > args.batch_size else None)
    except serving.ServingError as e:
        cli.fail(str(e))
    rows = []
    for r in results:
        if r.error:
            print(f"{r.path}: skipped ({r.error})", file=sys.stderr)
            continue
        best = list(zip(r.prediction.top_classes, r.prediction.top_scores, strict=True))[:args.top_k]
        print(f"{r.path}: " + ", ".join(f"{c} {s:.3f}" for c, s in best))
        rows.extend([str(r.path), rank, c, f"{s:.6f}"] for rank, (c, s) in enumerate(best, start=1))
    skipped = sum(1 for r in results if r.error)
    if skipped:
        print(f"{skipped} of {len(results)} images could not be read and were skipped", file=sys.stderr)
    if args.output:
        with open(args.output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "rank", "class", "score"])
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
