"""The gRPC server: servicers, standard health and (unless production) reflection, and one
interceptor that does for every call what the REST envelope and admission do for every request: request id and
trace span, the deadline, admission, metrics and the access log, and domain errors as
canonical statuses with rich details."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keel.api.grpc.admission import GrpcAdmission
from keel.api.grpc.encoded import passing_encoded
from keel.api.grpc.servicers import CallerServicer, ProfileServicer
from keel.domain.errors import CapacityReduced, FieldError, KeelError, QuotaExceeded, ValidationFailed
from keel.observability.context import RequestContext, request_context_var, valid_request_id
from keel.observability.sampled_log import SampledLog
from keel.profiles.v1 import profiles_pb2 as pb
from keel.profiles.v1 import profiles_pb2_grpc as pb_grpc
from keel.resilience.deadline import deadline_in
from keel.rpc.metadata import REQUEST_ID
from keel.rpc.status import (
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    MAX_REQUEST_BYTES,
    STATUS_DETAILS_KEY,
    to_status,
)

if TYPE_CHECKING:
    from keel.bootstrap import Keel

_log = structlog.get_logger("keel.access")
_propagator = TraceContextTextMapPropagator()
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    pb.DESCRIPTOR.services_by_name["CallerService"].full_name,
)
_HEALTH_POLL_SECONDS = 2.0
_refusal_log = SampledLog("keel.grpc")


class KeelInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keel: Keel) -> None:
        self._keel = keel
        self._admission = GrpcAdmission(keel.admission, keel.local.authenticator)
        self._series: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not method.startswith("/keel."):
            return handler  # health and reflection: never limited, never shed
        behaviour = handler.unary_unary
        deserialize: Any = handler.request_deserializer
        serialize = passing_encoded(handler.response_serializer)

        async def observed(request: bytes, context: Any) -> Any:
            return await self._serve(
                method, context, lambda: behaviour(_parsed(deserialize, request), context)
            )

        # Requests arrive as bytes and are parsed inside the call: a malformed one is then an
        # INVALID_ARGUMENT answered like any other error, not an UNKNOWN logged by gRPC itself.
        wrapped = grpc.unary_unary_rpc_method_handler(observed, response_serializer=serialize)
        self._handlers[method] = wrapped  # one per method, built on its first call
        return wrapped

    async def _serve(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        behaviour: Callable[[], Any],
    ) -> Any:
        keel = self._keel
        started = time.perf_counter()
        metadata = {
            key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
        }
        carrier = {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")}
        parent = _propagator.extract(carrier) if carrier else None
        span = keel.tracer.start_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER)
        trace_id = format(span.get_span_context().trace_id, "032x")
        request_id = metadata.get(REQUEST_ID, "")
        if not valid_request_id(request_id):
            request_id = trace_id
        otel_token = otel_context.attach(trace.set_span_in_context(span, parent))
        request_context = RequestContext(request_id, trace_id)
        context_token = request_context_var.set(request_context)
        code = grpc.StatusCode.OK
        refused = False
        # The caller's deadline, within the server's own limit: the database call gets what is left.
        remaining = context.time_remaining()
        timeout = keel.settings.request_timeout_seconds
        if remaining is not None:
            timeout = min(timeout, max(remaining, 0.0))
        try:
            try:
                with deadline_in(timeout):
                    return await self._admission.run(method, metadata, context.peer(), behaviour)
            except KeelError as error:
                code, status = to_status(error)
                refused = isinstance(error, QuotaExceeded | CapacityReduced)
                await context.abort(
                    code,
                    status.message,
                    trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
                )
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                if isinstance(error, grpc.aio.AbortError):
                    raise
                code = grpc.StatusCode.INTERNAL
                span.record_exception(error)
                _log.error("unhandled_error", exc_info=error)
                await context.abort(code, "The call failed; it has been logged.")
        finally:
            elapsed = time.perf_counter() - started
            counter, histogram = self._series_for(method, code.name)
            counter.inc()
            histogram.observe(elapsed)
            if span.is_recording():
                service, _, name = method.lstrip("/").partition("/")
                span.set_attribute("rpc.system", "grpc")
                span.set_attribute("rpc.service", service)
                span.set_attribute("rpc.method", name)
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
            if refused:
                # Refusals come by the thousand from an abuser: sampled, as REST's are.
                _refusal_log.warning("rpc_refused", method=method, code=code.name)
            elif keel.settings.access_log:
                _log.info(
                    "rpc",
                    method=method,
                    code=code.name,
                    duration_ms=round(elapsed * 1000, 3),
                    key_id=request_context.key_id,
                )
            request_context_var.reset(context_token)
            otel_context.detach(otel_token)

    def _series_for(self, method: str, code: str) -> tuple[Any, Any]:
        key = (method, code)
        series = self._series.get(key)
        if series is None:
            metrics = self._keel.metrics
            series = (
                metrics.grpc_requests.labels(method, code),
                metrics.grpc_request_duration.labels(method, code),
            )
            self._series[key] = series
        return series


def _parsed(deserialize: Callable[[bytes], Any], request: bytes) -> Any:
    try:
        return deserialize(request)
    except DecodeError:
        raise ValidationFailed(
            [FieldError("", "not a valid Protocol Buffers message of this method")]
        ) from None


async def _report_health(keel: Keel, servicer: health.aio.HealthServicer) -> None:
    """The standard health service says SERVING exactly when /readyz says ready."""
    try:
        ready, _ = await keel.readiness()
    except Exception:  # noqa: BLE001 - a failing check is "not serving", whatever failed
        ready = False
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)


async def _keep_reporting_health(keel: Keel, servicer: health.aio.HealthServicer) -> None:
    while True:
        await asyncio.sleep(_HEALTH_POLL_SECONDS)
        await _report_health(keel, servicer)


class GrpcServer:
    """A started `grpc.aio` server and its health reporter."""

    def __init__(self, keel: Keel, address: str) -> None:
        self._keel = keel
        self.server = grpc.aio.server(
            interceptors=[KeelInterceptor(keel)],
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_ProfileServiceServicer_to_server(ProfileServicer(keel), self.server)
        pb_grpc.add_CallerServiceServicer_to_server(CallerServicer(keel), self.server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        if keel.settings.grpc_reflection:  # off in production: callers get UNIMPLEMENTED
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
        self.port = self.server.add_insecure_port(address)
        self._reporter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Health answers from the first call on, and only says SERVING once readiness was seen.
        await _report_health(self._keel, self._health)
        await self.server.start()
        self._reporter = asyncio.create_task(_keep_reporting_health(self._keel, self._health))

    async def stop(self, grace_seconds: float = 5.0) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
