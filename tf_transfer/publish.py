"""Publish the backbone of a trained run or an export as a reusable SavedModel (TF-Hub format).

    python -m tf_transfer.publish runs/NAME/STAMP --out published/NAME-backbone
    python -m tf_transfer.publish saved_models/NAME[/VERSION] --out gs://bucket/backbones/NAME --license Apache-2.0

For an image run the folder holds the feature extractor (float32 images in [0, 1] in, features out; the
run's preprocessing inside), a model card (README.md and tf_transfer_card.json) and SHA256SUMS. It is
checked by reloading it with hub.KerasLayer(trainable=True) before it appears; then any team can
fine-tune it with `python -m tf_transfer.train --backbone hub:FOLDER`.

For a text run it holds two such folders in the TF-Hub BERT contract: preprocess/ (strings in, the
encoder inputs out, the vocabulary as an asset) and encoder/ (those in; sequence_output, pooled_output
and default out), used with `--backbone hub:FOLDER/encoder --preprocessor hub:FOLDER/preprocess`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tf_transfer import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run folder (its final weights) or an export (model or version folder)")
    cli.add_publish_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cli.start()
        from tf_transfer.workflows import publishing

        out = publishing.publish(args.source, args.out, args.license, args.overwrite)
        print(publishing.next_step(out))
        return 0

    return cli.run_command(body)


if __name__ == "__main__":
    sys.exit(main())
