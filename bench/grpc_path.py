"""The gRPC server path on its own: what a unary CRI call costs in Python's gRPC before any runtime work.

Run from the repository: `.venv/bin/python bench/grpc_path.py [--calls 2000]`.

Each server runs in a process of its own on a unix socket in a temp dir and answers
`runtime.v1.RuntimeService/Version`; one client (Python's gRPC, pycri's stubs, as in the suite)
makes the calls one at a time after a warm-up. The servers:

- aio, bytes: grpc.aio with a generic handler that answers with bytes serialised once
  (the floor of pycri's server: its list calls answer with kept bytes).
- aio, message: the same, building and serialising a VersionResponse in each call.
- aio, to_thread: the same, with one hop to the default executor per call (what a handler that
  reads a file or SQLite in a thread pays).
- uvloop, bytes: aio, bytes on uvloop's event loop instead of asyncio's (when uvloop is installed).
- sync, message: grpc's threaded server (a thread pool), building the message per call.
- pycri / containerd: a real daemon's Version, when `--pycri` / `--containerd` give a socket, or
  fresh ones (pycri, and an isolated containerd when installed) with `--daemons`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing
import multiprocessing.synchronize
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from measure import Latency, time_calls  # noqa: E402
from peers import containerd_available  # noqa: E402
from scenario_pull import fresh_pycri, isolated_containerd  # noqa: E402

from pycri.api import api_pb2, api_pb2_grpc  # noqa: E402

SERVICE = "runtime.v1.RuntimeService"
KINDS = ("aio, bytes", "aio, message", "aio, to_thread", "uvloop, bytes", "sync, message")


def version_reply() -> api_pb2.VersionResponse:
    return api_pb2.VersionResponse(version="0.1.0", runtime_name="bench", runtime_version="1", runtime_api_version="v1")


def _handler(behaviour: object) -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=api_pb2.VersionRequest.FromString,
        response_serializer=lambda reply: reply if isinstance(reply, bytes) else reply.SerializeToString(),
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Version": method})


async def _serve_aio(kind: str, socket: str, ready: multiprocessing.synchronize.Event) -> None:
    kept = version_reply().SerializeToString()

    async def as_bytes(request: object, context: object) -> bytes:
        return kept

    async def as_message(request: object, context: object) -> api_pb2.VersionResponse:
        return version_reply()

    async def via_thread(request: object, context: object) -> api_pb2.VersionResponse:
        return await asyncio.to_thread(version_reply)

    behaviour = {"bytes": as_bytes, "message": as_message, "to_thread": via_thread}[kind.split(", ")[1]]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(behaviour),))
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


def serve(kind: str, socket: str, ready: multiprocessing.synchronize.Event) -> None:
    if kind.startswith("aio"):
        asyncio.run(_serve_aio(kind, socket, ready))
        return
    if kind.startswith("uvloop"):
        import uvloop

        uvloop.run(_serve_aio(kind, socket, ready))
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_handler(lambda request, context: version_reply()),))
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    ready.set()
    server.wait_for_termination()


def measure(endpoint: str, calls: int, warmup: int) -> Latency:
    with grpc.insecure_channel(endpoint) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        return Latency.of(time_calls(lambda: stub.Version(api_pb2.VersionRequest()), calls, warmup))


def measure_kind(kind: str, calls: int, warmup: int) -> Latency:
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as directory:
        socket = f"{directory}/server.sock"
        # spawn, not fork: gRPC's state does not survive a fork of a process that has used it.
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        process = context.Process(target=serve, args=(kind, socket, ready), daemon=True)
        process.start()
        try:
            if not ready.wait(30):
                raise RuntimeError(f"the {kind} server did not start")
            return measure(f"unix://{socket}", calls, warmup)
        finally:
            process.terminate()
            process.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--pycri", help="a pycri socket (unix:///path) to time the same call against")
    parser.add_argument("--containerd", help="a containerd CRI socket (unix:///path) to time the same call against")
    parser.add_argument("--daemons", action="store_true", help="start a pycri and an isolated containerd to time")
    args = parser.parse_args()
    kinds = [kind for kind in KINDS if not kind.startswith("uvloop") or importlib.util.find_spec("uvloop")]
    rows = [(kind, measure_kind(kind, args.calls, args.warmup)) for kind in kinds]
    with contextlib.ExitStack() as stack:
        if args.daemons:
            args.pycri = stack.enter_context(fresh_pycri())
            if containerd_available():
                # Version pulls nothing: the registry and sandbox image are never used.
                args.containerd = stack.enter_context(isolated_containerd("127.0.0.1:1", "pause"))
        daemons = (("pycri daemon", args.pycri), ("containerd daemon", args.containerd))
        rows += [(name, measure(endpoint, args.calls, args.warmup)) for name, endpoint in daemons if endpoint]
    print(f"Version, {args.calls} calls one at a time after {args.warmup}; started {time.strftime('%H:%M:%S')}")
    print(f"{'server':<20}{'p50 ms':>10}{'p99 ms':>10}")
    for name, latency in rows:
        print(f"{name:<20}{latency.p50 * 1e3:>10.3f}{latency.p99 * 1e3:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
