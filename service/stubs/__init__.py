"""The Open Inference Protocol's gRPC stubs, generated from grpc_predict_v2.proto at build time.

`from service.stubs import messages, services` gives the generated `grpc_predict_v2_pb2` (the
messages) and `grpc_predict_v2_pb2_grpc` (the servicer base, `add_..._to_server`, the client
stub). `python -m service.stubs` (make stubs; the image's deps stage) writes them here.

Why generated at build time, from our own .proto, rather than another way:
- No well-kept package ships these stubs on their own: tritonclient carries Triton's larger
  grpc_service.proto (model configuration, shared memory, ...) as a client library, and KServe
  and MLServer carry theirs inside whole servers. The protocol is small and fixed; the .proto
  beside this file is written from KServe's grpc_predict_v2.proto, field numbers unchanged.
- Not committed: generated code goes stale silently when the .proto changes. Not generated on
  first import: that needs grpcio-tools (protoc) at run time and a writable folder, and the
  serving image has neither (read-only root, no grpcio-tools). The generator records the
  .proto's sha256 beside the stubs; importing them here compares it with the .proto and refuses
  missing or stale stubs with the command that makes them.
- The generated messages live in a private descriptor pool (`messages.POOL`), not protobuf's
  default one: the protocol's package is `inference`, which tritonclient.grpc also registers
  in the default pool, and the two would refuse to load into one process (a test session, a
  client in the server's virtual environment). The bytes on the wire are the same.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "grpc_predict_v2.proto"
STAMP = HERE / "grpc_predict_v2.sha256"  # the sha256 of the .proto the stubs were made from
MODULES = {"messages": "grpc_predict_v2_pb2", "services": "grpc_predict_v2_pb2_grpc"}


class StubsOutOfDate(ImportError):
    pass


def proto_digest() -> str:
    return hashlib.sha256(PROTO.read_bytes()).hexdigest()


def check() -> None:
    stamp = STAMP.read_text().strip() if STAMP.is_file() else None
    if stamp != proto_digest():
        state = "missing" if stamp is None else "older than grpc_predict_v2.proto"
        raise StubsOutOfDate(f"the gRPC stubs in service/stubs are {state}: run `make stubs` "
                             "(python -m service.stubs, which needs grpcio-tools)")


def __getattr__(name: str):
    if name not in MODULES:
        raise AttributeError(name)
    check()
    module = importlib.import_module(f"{__name__}.{MODULES[name]}")
    globals()[name] = module
    return module
