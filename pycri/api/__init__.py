"""Generated CRI v1 (runtime.v1) protobuf and gRPC stubs.

Import them as ``from pycri.api import api_pb2, api_pb2_grpc``. Do not edit the
generated files: change proto/runtime/v1/api.proto and run ``python tools/gen_api.py``.
"""
