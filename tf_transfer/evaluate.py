"""Evaluate an exported model on labelled data (class names matched by name).

    python -m tf_transfer.evaluate saved_models/NAME[/VERSION] --data FOLDER|csv:PATH|tfds:NAME [--split test]
    python -m tf_transfer.evaluate saved_models/REVIEWS --data csv:reviews.csv --text-column review

Writes metrics.json, metrics.txt, plots and report.html into --output (default: runs/evaluations/...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tf_transfer import cli
from tf_transfer.folders import RunDir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="an export: <export_dir>/<name>[/<version>] (latest version if omitted)")
    parser.add_argument("--data", required=True, help="labelled images: a folder, csv:PATH or tfds:NAME")
    parser.add_argument("--split", default="all", choices=("all", "train", "val", "test"),
                        help="when the data has its own splits, which one to use (default: all images)")
    parser.add_argument("--output", help="folder for metrics, plots and report (default: runs/evaluations/...)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-column", default="text", help="a text model's CSV: the column of the texts")
    parser.add_argument("--label-column", default="label", help="a text model's CSV: the column of the labels")
    parser.add_argument("--tta", action="store_true",
                        help="also score with test-time augmentation (averaged with the horizontal flip)")
    args = parser.parse_args(argv)

    def body() -> int:
        cli.start()
        from tf_transfer.workflows import evaluation

        out = evaluation.evaluate_export(args.export, args.data, args.split, args.output, args.batch_size, args.tta,
                                         {"text_column": args.text_column, "label_column": args.label_column})
        print(f"Report: {out.locate(RunDir.REPORT)}")
        return 0

    return cli.run_command(body)


if __name__ == "__main__":
    sys.exit(main())
