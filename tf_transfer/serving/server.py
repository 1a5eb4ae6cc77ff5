"""A local development server that speaks TF Serving's REST API subset (and its gRPC API) over
exported SavedModels, so the same clients and the same request JSON work against both
(``python -m tf_transfer.serve``). TF Serving is the production path; this server is a development
convenience that keeps TF Serving's behaviour: version watching and policies (``registry``), the REST
routes and JSON (``rest_api`` over the ``rest`` front end) and the gRPC services (``grpc_api``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from tf_transfer.serving import grpc_api, rest, rest_api
from tf_transfer.serving.registry import Registry, ServedModel, ServeLimits, VersionPolicy


class LocalServer:
    """REST (and optionally gRPC) front ends over some exported models; start() returns at once."""

    def __init__(self, model_dirs: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8501,
                 grpc_port: int | None = 8500, max_batch: int = 64, max_body_mb: float = 32.0,
                 version_policy: str = "latest", poll_seconds: float = 2.0, workers: int = 8):
        max_body = int(max_body_mb * (1 << 20))
        limits = ServeLimits(max_batch, max_tensor_bytes=max(2 * max_body, 1 << 20), concurrent_runs=workers)
        policy = VersionPolicy.parse(version_policy)
        self.registry = Registry([ServedModel(d, limits, policy) for d in model_dirs], poll_seconds)
        app = rest_api.RestApp(self.registry, limits)
        self.http = rest.HttpServer(app, host, port, rest.Limits(max_body_bytes=max_body, workers=workers))
        self.port = self.http.port
        self.grpc, self.grpc_port = None, None
        if grpc_port is not None:
            try:
                self.grpc, self.grpc_port = grpc_api.make_server(self.registry, limits, f"{host}:{grpc_port}",
                                                                 max_body, workers)
            except BaseException:
                self.http.stop()
                raise

    def start(self) -> LocalServer:
        self.http.start()
        if self.grpc:
            self.grpc.start()
        self.registry.start()
        return self

    def stop(self) -> None:
        self.registry.stop()
        self.http.stop()
        if self.grpc:
            self.grpc.stop(grace=None)

    def wait_for_version(self, name: str, version: int, timeout: float = 30.0) -> bool:
        """Block until `version` of `name` is served (tests and scripts that publish a version)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if version in self.registry.models[name].versions:
                return True
            time.sleep(0.1)
        return False
