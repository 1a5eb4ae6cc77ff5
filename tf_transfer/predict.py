"""Predict classes for image files (or texts) with an exported model, in this process or through a server.

    python -m tf_transfer.predict saved_models/NAME[/VERSION] images_or_folders...
    python -m tf_transfer.predict --server http://localhost:8501 --model NAME images_or_folders...
    python -m tf_transfer.predict --server grpc://localhost:8500 --model NAME images_or_folders...
    python -m tf_transfer.predict saved_models/REVIEWS review.txt reviews.csv -   # a text model

A text model takes .txt files (one text each), CSV files (one text per row, --text-column) and '-'
(one text per line of stdin).

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
    parser.add_argument("--text", action="store_true", help="with --server: the model takes texts (automatic for "
                        "a local export, and for .txt/.csv inputs and '-')")
    parser.add_argument("--text-column", default="text", help="text model, CSV inputs: the column of the texts")
    args = parser.parse_args(argv)
    if args.server and not args.model:
        parser.error("--server needs --model NAME")
    return cli.run_command(lambda: _predict(args))


def _predict(args) -> int:
    cli.start(log_to_stdout=False)  # stdout holds the predictions
    from tf_transfer.serving import clients

    if args.server:
        model = clients.client_for(args.server, args.model, version=args.version, timeout=args.timeout)
        inputs = args.inputs
        text = args.text or any(i == "-" or i.lower().endswith((".txt", ".csv")) for i in inputs)
    else:
        model = clients.LocalModel(args.inputs[0])
        inputs, text = args.inputs[1:], model.input_name == "text"
    if text:
        return _predict_texts(args, model, inputs)
    paths = clients.expand_inputs(inputs)
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


def _texts(inputs: Sequence[str], text_column: str) -> list[tuple[str, str]]:
    """(name, text) of every input: a .csv file's rows, stdin's non-empty lines ('-'), a file's whole text."""
    from tf_transfer.data import texts

    out = []
    for item in inputs:
        if item == "-":
            out += [(f"stdin:{i}", line.rstrip("\n")) for i, line in enumerate(sys.stdin, start=1) if line.strip()]
        elif item.lower().endswith(".csv"):
            out += [(f"{item}:{i}", t) for i, t in enumerate(texts.read_texts(item, text_column), start=2)]
        else:
            out += [(item, texts.read_texts(item)[0])]
    return out


def _predict_texts(args, model, inputs: Sequence[str]) -> int:
    """Predict texts in batches; a refused batch is retried one text at a time, so each gets its answer."""
    from tf_transfer.serving import clients

    items = _texts(inputs, args.text_column)
    if not items:
        raise DataError("no texts given; expected .txt or .csv files, or '-' to read lines from stdin")
    rows, failed = [], 0
    for start in range(0, len(items), args.batch_size):
        batch = items[start:start + args.batch_size]
        try:
            answers = model.predict_texts([t for _, t in batch])
        except clients.BadRequest:
            answers = []
            for _, t in batch:
                try:
                    answers.append(model.predict_texts([t])[0])
                except clients.BadRequest as e:
                    answers.append(e)
        for (name, _), answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                failed += 1
                print(f"{name}: refused ({answer})", file=sys.stderr)
                continue
            print(f"{name}: {answer.describe(args.top_k)}")
            rows.extend([name, rank, c, f"{score:.6f}"] for _, rank, c, score in answer.rows(args.top_k))
    if args.output:
        folders.write_csv(args.output, [["input", "rank", "class", "score"], *rows])
    return 1 if failed == len(items) else 0


if __name__ == "__main__":
    sys.exit(main())
