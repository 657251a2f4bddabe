"""Wire each CRI method to its handler, and every error to a gRPC status.

Handlers live one per RPC in pycri/server/runtime/ and pycri/server/image/;
a method with no handler answers UNIMPLEMENTED (never a fake success). With metrics
or tracing on, each method gets a wrapper that also measures and traces the call
(pycri.telemetry); with both off it gets the plain one.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeGuard

import grpc
from google.protobuf.message import Message

from pycri import telemetry
from pycri.api import api_pb2
from pycri.errors import PycriError, Unimplemented

log = logging.getLogger(__name__)

UnaryHandler = Callable[[Any, Any], Awaitable[Message | bytes]]
StreamHandler = Callable[[Any, Any], AsyncIterator[Message]]
Handler = UnaryHandler | StreamHandler


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, PycriError):
        log.info("call failed", extra={"fields": {"method": method, "code": exc.code.name, "error": str(exc)}})
        await context.abort(exc.code, str(exc))
    log.error("call crashed", exc_info=exc, extra={"fields": {"method": method}})
    await context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {exc}")


def _serializer(reply_type: type[Message]) -> Callable[[Message | bytes], bytes]:
    """A handler may answer with the reply's bytes, built from parts it keeps serialised."""

    def serialize(reply: Message | bytes) -> bytes:
        return reply if isinstance(reply, bytes) else reply_type.SerializeToString(reply)

    return serialize


def _unary(method: str, handler: UnaryHandler, daemon: Any) -> Callable[..., Awaitable[Message | bytes]]:
    async def call(request: Message, context: grpc.aio.ServicerContext) -> Message | bytes:
        started = time.monotonic()
        try:
            reply = await handler(daemon, request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            await _abort(context, method, exc)
            raise  # unreachable: abort raises
        log.debug("call", extra={"fields": {"method": method, "ms": round((time.monotonic() - started) * 1e3, 2)}})
        return reply

    return call


def _stream(method: str, handler: StreamHandler, daemon: Any) -> Callable[..., AsyncIterator[Message]]:
    async def call(request: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        try:
            async for reply in handler(daemon, request):
                yield reply
        except Exception as exc:  # noqa: BLE001
            await _abort(context, method, exc)

    return call


def _observed_unary(
    service: str, method: str, call: Callable[..., Awaitable[Message | bytes]]
) -> Callable[..., Awaitable[Message | bytes]]:
    async def observed(request: Message, context: grpc.aio.ServicerContext) -> Message | bytes:
        with telemetry.RpcCall(service, method, context):
            return await call(request, context)

    return observed


def _observed_stream(
    service: str, method: str, call: Callable[..., AsyncIterator[Message]]
) -> Callable[..., AsyncIterator[Message]]:
    async def observed(request: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        with telemetry.RpcCall(service, method, context):
            async for reply in call(request, context):
                yield reply

    return observed


def _unimplemented(method: str, streaming: bool) -> Handler:
    async def reply(daemon: Any, request: Message) -> Message:
        raise Unimplemented(f"{method} is not implemented by pycri yet")

    async def replies(daemon: Any, request: Message) -> AsyncIterator[Message]:
        raise Unimplemented(f"{method} is not implemented by pycri yet")
        yield request  # makes this an async generator

    return replies if streaming else reply


def _is_unary(handler: Handler) -> TypeGuard[UnaryHandler]:
    return inspect.iscoroutinefunction(handler)


def _is_stream(handler: Handler) -> TypeGuard[StreamHandler]:
    return inspect.isasyncgenfunction(handler)


def service_handler(service: str, handlers: dict[str, Handler], daemon: Any) -> grpc.GenericRpcHandler:
    descriptor = api_pb2.DESCRIPTOR.services_by_name[service]
    unknown = set(handlers) - {m.name for m in descriptor.methods}
    if unknown:
        raise ValueError(f"handlers for methods {service} does not have: {sorted(unknown)}")
    methods: dict[str, grpc.RpcMethodHandler] = {}
    observed = telemetry.enabled()  # decided once: with telemetry off a call pays nothing for it
    for method in descriptor.methods:
        request_type = getattr(api_pb2, method.input_type.name)
        reply_type = getattr(api_pb2, method.output_type.name)
        codec = {"request_deserializer": request_type.FromString, "response_serializer": _serializer(reply_type)}
        full_name = f"{service}/{method.name}"
        handler = handlers.get(method.name) or _unimplemented(full_name, method.server_streaming)
        if method.server_streaming and _is_stream(handler):
            replies = _stream(full_name, handler, daemon)
            if observed:
                replies = _observed_stream(descriptor.full_name, method.name, replies)
            methods[method.name] = grpc.unary_stream_rpc_method_handler(replies, **codec)
        elif not method.server_streaming and _is_unary(handler):
            reply = _unary(full_name, handler, daemon)
            if observed:
                reply = _observed_unary(descriptor.full_name, method.name, reply)
            methods[method.name] = grpc.unary_unary_rpc_method_handler(reply, **codec)
        else:
            kind = "an async generator" if method.server_streaming else "a coroutine function"
            raise ValueError(f"the handler for {full_name} must be {kind}")
    return grpc.method_handlers_generic_handler(descriptor.full_name, methods)
