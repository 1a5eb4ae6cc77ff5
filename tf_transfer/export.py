"""Verify an export, export a finished run again, or write TF Serving's model config.

    python -m tf_transfer.export --verify saved_models/NAME/VERSION   # re-check in this fresh process
    python -m tf_transfer.export --run runs/NAME/STAMP [--tflite float,int8]   # export a run again
    python -m tf_transfer.export --models-config saved_models          # TF Serving config for all models

A version is written and verified in a hidden staging folder and only then renamed into place as the
next integer version, so TF Serving never loads an incomplete or unverified one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tf_transfer import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--verify", metavar="PATH", help="check an export <name>/<version> in this fresh process")
    mode.add_argument("--run", metavar="RUN_DIR", help="export a finished run (as a new version)")
    mode.add_argument("--models-config", metavar="EXPORT_DIR", help="write TF Serving model config files")
    parser.add_argument("--tflite", metavar="VARIANTS", default="",
                        help="with --run: also write TFLite models (comma list of float,dynamic,float16,int8)")
    parser.add_argument("--json", action="store_true", help="with --verify: print the result as one JSON line")
    return parser


def _verify(path: str, as_json: bool) -> int:
    from tf_transfer.errors import TransferError
    from tf_transfer.serving import savedmodel

    try:
        result = savedmodel.verify(path)
    except (TransferError, OSError) as e:
        result = {"path": path, "ok": False, "error": str(e)}
    print(json.dumps(result) if as_json else f"{'OK' if result['ok'] else 'FAILED'}: {json.dumps(result, indent=2)}")
    return 0 if result["ok"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cli.start(log_to_stdout=not args.json)  # --json: stdout is one JSON line
        if args.verify:
            return _verify(args.verify, args.json)
        from tf_transfer.serving import savedmodel

        if args.models_config:
            docker, local = savedmodel.write_models_config(args.models_config)
            print(f"Wrote {docker} (for the container) and {local} (for tensorflow_model_server):")
            print(f"  tensorflow_model_server --port=8500 --rest_api_port=8501 --model_config_file={local}")
            return 0
        from tf_transfer.workflows import exporting

        path = exporting.export_run(args.run, [v for v in args.tflite.split(",") if v])
        for label, command in savedmodel.serving_commands(path).items():
            print(f"{label}:\n  {command}")
        return 0

    return cli.run_command(body)


if __name__ == "__main__":
    sys.exit(main())
