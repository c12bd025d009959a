"""python -m service.stubs: generate the gRPC stubs from grpc_predict_v2.proto with grpcio-tools.

The proto is compiled with the folder above `service/` as its root, so that the generated
service module imports the messages as `service.stubs.grpc_predict_v2_pb2`. The messages are
then moved from protobuf's default descriptor pool to a private one (see __init__.py), and the
.proto's sha256 is written last, so that an interrupted run leaves stubs marked out of date.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from service.stubs import HERE, MODULES, PROTO, STAMP, proto_digest

ROOT = HERE.parent.parent
DEFAULT_POOL = re.compile(r"^DESCRIPTOR = _descriptor_pool\.Default\(\)\.AddSerializedFile\(", re.M)


def generate() -> None:
    from grpc_tools import protoc

    STAMP.unlink(missing_ok=True)
    relative = PROTO.relative_to(ROOT).as_posix()
    with tempfile.TemporaryDirectory() as output:
        code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={output}",
                            f"--grpc_python_out={output}", relative])
        if code != 0:
            raise SystemExit(f"protoc failed on {relative} (exit code {code})")
        generated = Path(output) / PROTO.parent.relative_to(ROOT)
        messages = generated / f"{MODULES['messages']}.py"
        text, count = DEFAULT_POOL.subn("POOL = _descriptor_pool.DescriptorPool()\n"
                                        "DESCRIPTOR = POOL.AddSerializedFile(", messages.read_text())
        if count != 1:
            raise SystemExit("protoc's output has changed shape: no default-pool registration to move")
        messages.write_text(text)
        for module in MODULES.values():
            shutil.copyfile(generated / f"{module}.py", HERE / f"{module}.py")
    STAMP.write_text(proto_digest() + "\n")


if __name__ == "__main__":
    generate()
    print(f"gRPC stubs generated in {HERE.relative_to(ROOT)}", file=sys.stderr)
