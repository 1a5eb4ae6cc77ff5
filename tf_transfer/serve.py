"""A local development server that speaks TF Serving's REST API subset (and its gRPC API) over
exported SavedModels, so the same clients and the same request JSON work against both.

    python -m tf_transfer.serve saved_models/NAME [saved_models/OTHER ...] [--port 8501] [--grpc-port 8500]

REST: GET /v1/models/<name>[/versions/<v>] (status), GET .../metadata, POST ...:predict,
POST ...:classify. gRPC: PredictionService Predict/Classify/GetModelMetadata and ModelService
GetModelStatus. It binds to 127.0.0.1 by default, bounds request bodies and batch sizes, and answers
bad requests with 4xx and {"error": "..."}. TF Serving is the production path; this server is a
development convenience.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence

from tf_transfer import cli
from tf_transfer.errors import TransferError

log = logging.getLogger("tf_transfer.serve")  # also when run as __main__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tf_transfer.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders <export_dir>/<name> (the latest version is served)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's default 8501)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (8500); -1 turns gRPC off")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch a request may carry")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MB")
    parser.add_argument("--version-policy", default="latest",
                        help="versions to serve, as TF Serving's policies: latest (default), latest:N, all, "
                             "specific:V1,V2; new versions are picked up as they appear")
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="how often to look for new versions (0: never)")
    parser.add_argument("--workers", type=int, default=8, help="threads running requests (REST and gRPC each)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cli.start()
        from tf_transfer.serving.server import LocalServer

        try:
            server = LocalServer(args.models, args.host, args.port, None if args.grpc_port < 0 else args.grpc_port,
                                 args.max_batch, args.max_body_mb, args.version_policy, args.poll_seconds,
                                 args.workers).start()
        except OSError as e:
            raise TransferError(f"cannot start the server on {args.host}:{args.port}: {e}") from None
        for name, model in server.registry.models.items():
            log.info("Serving %s version(s) %s from %s", name, ", ".join(map(str, sorted(model.versions))),
                     model.dir.path)
        log.info("REST: http://%s:%d/v1/models/<name>[:predict|:classify|/metadata]", args.host, server.port)
        if server.grpc_port:
            log.info("gRPC: %s:%d", args.host, server.grpc_port)
        log.info("A development server: use TF Serving in production (see the README). Ctrl-C stops it.")
        try:
            threading.Event().wait()
        finally:
            server.stop()

    return cli.run_command(body)


if __name__ == "__main__":
    sys.exit(main())
