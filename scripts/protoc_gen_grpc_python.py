"""protoc-gen-grpc_python: the gRPC Python generator as a protoc plugin, for buf.

grpcio-tools ships that generator only inside its bundled protoc, not as a
plugin binary, so this reads buf's CodeGeneratorRequest, hands the same files
to grpc_tools.protoc as a descriptor set, and returns what it wrote.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    with tempfile.TemporaryDirectory() as tmp:
        fds = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        (Path(tmp) / "in.pb").write_bytes(fds.SerializeToString())
        out = Path(tmp) / "out"
        out.mkdir()
        args = ["protoc", f"--descriptor_set_in={tmp}/in.pb", f"--grpc_python_out={out}"]
        if request.parameter:
            args.append(f"--grpc_python_opt={request.parameter}")
        if protoc.main([*args, *request.file_to_generate]) != 0:
            response.error = "grpc_tools.protoc failed"
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            response.file.add(name=str(path.relative_to(out)), content=path.read_text())
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
