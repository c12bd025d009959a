"""The Open Inference Protocol over gRPC: ModelInferRequest -> InferenceRequest, InferenceResponse
-> ModelInferResponse, and the metadata messages. Pure functions over the generated messages
(service/stubs); no server objects, so each is unit-tested without a server.

Inputs come either as typed `contents` (one repeated field per family of datatypes: INT8, INT16
and INT32 share int_contents, for example, and are held to their own range here) or as
`raw_input_contents`, one little-endian, row-major blob per input in the order of `inputs` (the
binary tensor data extension's rule; FP16 travels only this way, as the protocol has no 16-bit
float field). A request uses one or the other, never both.

Outputs: raw_output_contents when the request sent raw inputs (tritonclient.grpc does, and reads
only raw outputs), typed contents when it sent typed ones (what a client that reads the message
as JSON, such as grpcurl, can use). The request parameter `raw_output` (bool) overrides that
choice. An FP16 output makes the whole answer raw, since the protocol forbids mixing the two.

Parameters: the request's `parameters` are decoded to Python values and passed to the data plane
in InferenceRequest.parameters, as the REST codec does; they are not echoed in the answer.
"""

from __future__ import annotations

import numpy as np

from modelcard.card import TensorSpec
from service.core.errors import BadRequest, quote
from service.core.tensors import check_datatype, check_shape, datatype_of, from_bytes, to_bytes
from service.core.types import InferenceRequest, InferenceResponse, RequestedOutput
from service.repository.version_folder import LoadedModel
from service.stubs import messages

PLATFORM = "onnx_onnxv1"
RAW_OUTPUT = "raw_output"
# The InferTensorContents field of each datatype; FP16 has none (raw only). BYTES inputs are
# refused; BYTES outputs are the classification extension's.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
# The NumPy type each field's values arrive in, before they are held to the declared datatype.
FIELD_DTYPE = {
    "bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
    "uint_contents": np.uint32, "uint64_contents": np.uint64,
    "fp32_contents": np.float32, "fp64_contents": np.float64,
}
ALL_FIELDS = (*FIELD_DTYPE, "bytes_contents")


def parameters(entries) -> dict:
    """A map<string, InferParameter> as a dict of Python values (bool, int or str)."""
    decoded = {}
    for key, parameter in entries.items():
        choice = parameter.WhichOneof("parameter_choice")
        decoded[key] = getattr(parameter, choice) if choice else None
    return decoded


def decode_request(message) -> InferenceRequest:
    if not message.inputs:
        raise BadRequest("field 'inputs' must be a non-empty array of tensors")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries but inputs has "
                         f"{len(message.inputs)}; give one per input, in the order of inputs")
    decoded: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        where = f"inputs[{index}]"
        if not tensor.name:
            raise BadRequest(f"{where}.name must be a string")
        where = f"{where} {quote(tensor.name)}"
        if tensor.name in decoded:
            raise BadRequest(f"{where}: input given twice")
        if not tensor.datatype:
            raise BadRequest(f"{where}: field 'datatype' is missing")
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"{where}: give either contents or raw_input_contents, not both")
            decoded[tensor.name] = from_bytes(raw[index], tensor.datatype, list(tensor.shape), where)
        else:
            decoded[tensor.name] = typed_contents(tensor, where)
    request_parameters = parameters(message.parameters)
    if not isinstance(request_parameters.get(RAW_OUTPUT, False), bool):
        raise BadRequest(f"parameters.{RAW_OUTPUT} must be a bool_param")
    outputs = None
    if message.outputs:
        outputs = [RequestedOutput(output.name, parameters(output.parameters)) for output in message.outputs]
    return InferenceRequest(inputs=decoded, outputs=outputs, id=message.id or None,
                            parameters=request_parameters)


def typed_contents(tensor, where: str) -> np.ndarray:
    """An input given as InferTensorContents, as an array of its declared datatype."""
    dtype = check_datatype(tensor.datatype, where)
    shape, count = check_shape(list(tensor.shape), where)
    if tensor.datatype == "FP16":
        raise BadRequest(f"{where}: FP16 has no typed contents field in the protocol; send it in "
                         "raw_input_contents")
    field = CONTENTS_FIELD[tensor.datatype]
    contents = tensor.contents
    stray = [name for name in ALL_FIELDS if name != field and len(getattr(contents, name))]
    if stray:
        raise BadRequest(f"{where}: datatype {tensor.datatype} takes its values in contents.{field}, "
                         f"not contents.{stray[0]}")
    values = getattr(contents, field)
    if len(values) != count:
        raise BadRequest(f"{where}: contents.{field} has {len(values)} values but shape "
                         f"{list(shape)} needs {count}")
    array = np.array(values, dtype=FIELD_DTYPE[field])
    if array.dtype != dtype and array.size:  # INT8/INT16 from int32, UINT8/UINT16 from uint32
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise BadRequest(f"{where}: a value lies outside the range of {tensor.datatype}")
    return array.astype(dtype, copy=False).reshape(shape)


def raw_outputs(message, response: InferenceResponse) -> bool:
    """Whether to answer with raw_output_contents (see the module's docstring)."""
    if any(values.dtype == np.float16 for values in response.outputs.values()):
        return True
    return response.parameters.get(RAW_OUTPUT, bool(message.raw_input_contents))


def encode_response(response: InferenceResponse, raw: bool):
    model = response.model
    answer = messages.ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                         id=response.id or "")
    for name, values in response.outputs.items():
        datatype = datatype_of(values)
        tensor = answer.outputs.add(name=name, datatype=datatype, shape=values.shape)
        if raw:
            answer.raw_output_contents.append(to_bytes(values))
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values.ravel().tolist())
    return answer


def tensor_metadata(specs: tuple[TensorSpec, ...]) -> list:
    return [messages.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype,
                                                          shape=spec.shape) for spec in specs]


def encode_metadata(model: LoadedModel, versions: list[int]):
    return messages.ModelMetadataResponse(
        name=model.name, versions=[str(v) for v in versions], platform=PLATFORM,
        inputs=tensor_metadata(model.card.inputs), outputs=tensor_metadata(model.card.outputs))
