"""Pre-train a backbone on your own source data and publish it for transfer (TF-Hub format).

    python -m tf_transfer.pretrain --data labelled_source --weights none --out published/source-backbone
    python -m tf_transfer.pretrain --method rotation --data unlabelled_images --out published/ssl-backbone
    python -m tf_transfer.pretrain --method mlm --data csv:texts.csv --backbone hf:DIR --out published/my-encoder

--method supervised learns the source's labels; --method rotation learns, without labels, which way
each image was turned (0/90/180/270 degrees); --method mlm continues a BERT-family text encoder with
masked-language modelling on your texts (a CSV's text column, a .txt file of one text per line or a
folder of .txt files; labels ignored), reading phase 2's epochs, learning rate, weight decay and
schedule, and publishes it as a preprocessor and an encoder in the TF-Hub BERT contract.

For images, with --weights none the backbone trains from random initialisation (every layer, all
epochs of both phases); with imagenet or a weights file it continues from them in the usual two phases.
The run is a normal run folder (resume with --resume RUN_DIR and the same --out); at the end its
backbone is published to --out, as `python -m tf_transfer.publish` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tf_transfer import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="supervised", choices=("supervised", "rotation", "mlm"),
                        help="what the backbone learns from the source (default: supervised; mlm: texts)")
    cli.add_publish_flags(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted pre-training run, then publish")
    cli.add_config_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = cli.config_from_args(args)
        cli.start()
        from tf_transfer.workflows import pretraining, publishing

        out = pretraining.pretrain(config, args.method, args.out, args.license, args.overwrite, args.resume)
        print(publishing.next_step(out))
        return 0

    return cli.run_command(body)


if __name__ == "__main__":
    sys.exit(main())
