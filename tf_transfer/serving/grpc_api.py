"""TF Serving's gRPC API over the served models: PredictionService (Predict, Classify,
GetModelMetadata) and ModelService (GetModelStatus).

Every TensorProto is checked against the signature's input before it is expanded: its rank must be the
declared one, then the batch within --max-batch, every dimension bounded and the expanded size within
limits, then its dtype the declared one; so a 70-byte request cannot ask for gigabytes (a proto may hold
one value and a shape to repeat it over), nor a rank-33 string tensor reach TensorFlow (which crashes on it).
"""

from __future__ import annotations

import logging
from concurrent import futures
from http import HTTPStatus

import numpy as np
import tensorflow as tf

from tf_transfer.serving.inputs import InputSpec, bad_request
from tf_transfer.serving.registry import Registry, RequestError, ServeLimits, internal_error

log = logging.getLogger(__name__)
_DTYPES = {d.as_datatype_enum for d in (tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.int8, tf.int16, tf.int32,
                                       tf.int64, tf.uint8, tf.uint16, tf.uint32, tf.uint64, tf.bool, tf.string)}


def tensor_from_proto(spec: InputSpec, proto, limits: ServeLimits) -> np.ndarray:
    """A TensorProto as numpy, after checking it against the signature's input: rank, then sizes (and what
    they would expand to), then dtype."""
    name = spec.name
    if proto.tensor_shape.unknown_rank:
        raise bad_request(f"input {name!r}: the tensor shape must be known")
    shape = [d.size for d in proto.tensor_shape.dim]
    dtype = tf.dtypes.as_dtype(proto.dtype) if proto.dtype in _DTYPES else None
    spec.check_shape(shape, limits, 1 if dtype in (None, tf.string) else dtype.size)
    if dtype is None or dtype in (tf.resource, tf.variant):
        raise bad_request(f"input {name!r}: {spec.describe()}; got an unsupported dtype")
    spec.check_dtype(dtype.name)
    if dtype == tf.string and int(np.prod(shape, dtype=object)) != len(proto.string_val):
        raise bad_request(f"input {name!r}: {len(proto.string_val)} strings for shape {shape}")
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError) as e:
        raise bad_request(f"input {name!r}: {str(e)[:200]}") from None


def checked_inputs(model, request, limits: ServeLimits) -> tuple[str, dict[str, np.ndarray]]:
    """The signature a PredictRequest names and its inputs as numpy, each checked before it is expanded."""
    name, _ = model.signature(request.model_spec.signature_name)
    specs = model.input_specs(name)
    if set(request.inputs) != set(specs):
        raise bad_request(f"signature {name} takes inputs {sorted(specs)}, got {sorted(request.inputs)}")
    return name, {k: tensor_from_proto(specs[k], v, limits) for k, v in request.inputs.items()}


def _status_code(status: int):
    import grpc

    return {HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
            HTTPStatus.INTERNAL_SERVER_ERROR: grpc.StatusCode.INTERNAL}.get(status, grpc.StatusCode.INVALID_ARGUMENT)


def _guarded(method):
    """Map RequestError to its gRPC status and any other failure to INTERNAL (details stay in the log)."""
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except RequestError as e:
            context.abort(_status_code(e.status), str(e))
        except Exception:
            error = internal_error(f"gRPC {method.__name__}")
            context.abort(_status_code(error.status), str(error))
    wrapper.__name__ = method.__name__
    return wrapper


def _servicers(registry: Registry, limits: ServeLimits):
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def lookup(spec):
        return registry.get(spec.name, spec.version.value if spec.HasField("version") else None)

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        @_guarded
        def Predict(self, request, context):
            model = lookup(request.model_spec)
            name, inputs = checked_inputs(model, request, limits)
            out = model.run(name, inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name, response.model_spec.version.value = request.model_spec.name, model.version
            for k, v in out.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

        @_guarded
        def Classify(self, request, context):
            model = lookup(request.model_spec)
            limits.check_batch(len(request.input.example_list.examples))
            examples = [e.SerializeToString() for e in request.input.example_list.examples]
            classes, scores = model.classify(examples, request.model_spec.signature_name)
            response = classification_pb2.ClassificationResponse()
            response.model_spec.name, response.model_spec.version.value = request.model_spec.name, model.version
            for cr, sr in zip(classes, scores, strict=True):
                result = response.result.classifications.add()
                for c, s in zip(cr, sr, strict=True):
                    result.classes.add(label=c.decode("utf-8", "replace"), score=float(s))
            return response

        @_guarded
        def GetModelMetadata(self, request, context):
            model = lookup(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name, response.model_spec.version.value = request.model_spec.name, model.version
            response.metadata["signature_def"].Pack(model.metadata_proto())
            return response

    class Status(model_service_pb2_grpc.ModelServiceServicer):
        @_guarded
        def GetModelStatus(self, request, context):
            lookup(request.model_spec)
            response = get_model_status_pb2.GetModelStatusResponse()
            for version in sorted(registry.models[request.model_spec.name].versions, reverse=True):
                response.model_version_status.add(version=version,
                                                   state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            return response

    return Prediction(), Status(), prediction_service_pb2_grpc, model_service_pb2_grpc


def make_server(registry: Registry, limits: ServeLimits, address: str, max_message_bytes: int, workers: int = 8):
    """A grpc.Server with PredictionService and ModelService (not started) and its port."""
    import grpc

    prediction, status, prediction_grpc, model_grpc = _servicers(registry, limits)
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    # A bounded pool, and calls beyond what it can queue are refused (RESOURCE_EXHAUSTED) at once.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         maximum_concurrent_rpcs=workers * 8)
    prediction_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_grpc.add_ModelServiceServicer_to_server(status, server)
    port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
