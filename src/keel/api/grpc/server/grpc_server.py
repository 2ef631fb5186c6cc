"""The gRPC server: servicers, standard health and (unless production) reflection, and one
interceptor that does for every call what the REST envelope and admission do for every request: request id and
trace span, the deadline, admission, metrics and the access log, and domain errors as
canonical statuses with rich details."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Tracer

from keel.admission import Admission
from keel.api.envelope import Exchange, Series
from keel.api.grpc.server.admission import GrpcAdmission, KeyResolver
from keel.api.grpc.server.api_keys import ApiKeyServicer
from keel.api.grpc.server.encoded import passing_encoded
from keel.api.grpc.server.servicers import CallerServicer, ProfileServicer
from keel.api.grpc.wire.metadata import CONSISTENCY_TOKEN, REQUEST_ID
from keel.api.grpc.wire.status import (
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    STATUS_DETAILS_KEY,
    to_status,
)
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.config import Settings
from keel.domain.errors import CapacityReduced, FieldError, KeelError, QuotaExceeded, ValidationFailed
from keel.observability.metrics import Metrics
from keel.observability.sampled_log import SampledLog
from keel.resilience.deadline import deadline_in
from keel.service.api_key_admin import ApiKeyAdmin
from keel.service.consistency import from_token
from keel.service.consistency import scope as consistency_scope
from keel.service.use_cases import PersonalDataUseCases, ProfileUseCases


class GrpcServices(Protocol):
    """What the gRPC server needs of the process (the composition root hands it in)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def admission(self) -> Admission: ...
    @property
    def profiles(self) -> ProfileUseCases: ...
    @property
    def personal_data(self) -> PersonalDataUseCases | None: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def tracer(self) -> Tracer: ...
    @property
    def readiness(self) -> Callable[[], Awaitable[tuple[bool, dict[str, str]]]]: ...
    @property
    def api_keys(self) -> ApiKeyAdmin | None: ...


_log = structlog.get_logger("keel.access")
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    pb.DESCRIPTOR.services_by_name["CallerService"].full_name,
    pb.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
)
_HEALTH_POLL_SECONDS = 2.0
# An edge's channel carries many calls at once and is reused for hours: idle means no call at all
# for a minute (the edge reconnects on its next call), and 1,024 calls at once per connection.
GRPC_IDLE_CONNECTION_MS = 60_000
GRPC_MAX_CONCURRENT_STREAMS = 1024
_refusal_log = SampledLog("keel.grpc")


class KeelInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keel: GrpcServices, keys: KeyResolver) -> None:
        self._keel = keel
        self._admission = GrpcAdmission(keel.admission, keys)
        self._series = Series(keel.metrics.grpc_requests, keel.metrics.grpc_request_duration)
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
        received = [
            (key, value) for key, value in context.invocation_metadata() or () if isinstance(value, str)
        ]
        metadata = dict(received)
        # Keys sent more than once (the dict kept the last): admission refuses repeated credentials.
        repeated = (
            frozenset(key for key, count in Counter(k for k, _ in received).items() if count > 1)
            if len(metadata) < len(received)
            else frozenset()
        )
        carrier = {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")}
        exchange = Exchange(keel.tracer, method.lstrip("/"), carrier, metadata.get(REQUEST_ID, ""))
        code = grpc.StatusCode.OK
        refused = False
        # The caller's deadline, within the server's own limit: the database call gets what is left.
        remaining = context.time_remaining()
        timeout = keel.settings.request_timeout_seconds
        # What the caller left us, as it arrived (whole ms, rounded down; None: no deadline sent),
        # for the access log and the span: an operator sees which callers leave too little.
        deadline_ms: int | None = None
        if remaining is not None:
            timeout = min(timeout, max(remaining, 0.0))
            deadline_ms = int(max(remaining, 0.0) * 1000)
        try:
            try:
                consistency = from_token(metadata.get(CONSISTENCY_TOKEN))
                with deadline_in(timeout), consistency_scope(consistency):
                    reply = await self._admission.run(
                        method, metadata, context.peer(), behaviour, repeated=repeated
                    )
                answered = consistency.answer()
                if answered is not None:
                    context.set_trailing_metadata(((CONSISTENCY_TOKEN, answered),))
                return reply
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
                exchange.span.record_exception(error)
                _log.error("unhandled_error", exc_info=error)
                await context.abort(code, "The call failed; it has been logged.")
        finally:
            if refused:
                # Refusals come by the thousand from an abuser: sampled, as REST's are.
                _refusal_log.warning("rpc_refused", method=method, code=code.name)
            service, _, name = method.lstrip("/").partition("/")
            exchange.close(
                self._series,
                (method, code.name),
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": name,
                    "rpc.grpc.status_code": code.value[0],
                    **({} if deadline_ms is None else {"keel.rpc.deadline_ms": deadline_ms}),
                }
                if exchange.span.is_recording()
                else None,
                failed=code in _FAILED,
                access_log=("rpc", {"method": method, "code": code.name, "deadline_ms": deadline_ms})
                if keel.settings.access_log and not refused
                else None,
            )


_FAILED = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)


def _parsed(deserialize: Callable[[bytes], Any], request: bytes) -> Any:
    try:
        return deserialize(request)
    except DecodeError:
        raise ValidationFailed(
            [FieldError("", "not a valid Protocol Buffers message of this method")]
        ) from None


async def _report_health(keel: GrpcServices, servicer: health.aio.HealthServicer) -> None:
    """The standard health service says SERVING exactly when /readyz says ready."""
    try:
        ready, _ = await keel.readiness()
    except Exception:  # noqa: BLE001 - a failing check is "not serving", whatever failed
        ready = False
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)


async def _keep_reporting_health(keel: GrpcServices, servicer: health.aio.HealthServicer) -> None:
    while True:
        await asyncio.sleep(_HEALTH_POLL_SECONDS)
        await _report_health(keel, servicer)


class GrpcServer:
    """A started `grpc.aio` server and its health reporter. Only a core serves gRPC: `keys`
    are its own key lookups (an edge has none to vouch from)."""

    def __init__(self, keel: GrpcServices, keys: KeyResolver, address: str) -> None:
        self._keel = keel
        settings = keel.settings
        self.server = grpc.aio.server(
            interceptors=[KeelInterceptor(keel, keys)],
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # The HTTP server's limits, for gRPC's own headers: a call's metadata as large as
                # HTTP headers may be, a connection's handshake as long as headers may take to
                # arrive, and connections without calls closed after a while.
                ("grpc.max_metadata_size", settings.http_max_header_bytes),
                ("grpc.server_handshake_timeout_ms", int(settings.http_header_timeout_seconds * 1000)),
                ("grpc.max_connection_idle_ms", GRPC_IDLE_CONNECTION_MS),
                ("grpc.max_concurrent_streams", GRPC_MAX_CONCURRENT_STREAMS),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_ProfileServiceServicer_to_server(
            ProfileServicer(
                keel.profiles,
                encoded_profiles=keel.settings.grpc_encoded_profiles,
                personal_data=keel.personal_data,
            ),
            self.server,
        )
        pb_grpc.add_CallerServiceServicer_to_server(CallerServicer(keys), self.server)
        pb_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(keel.api_keys), self.server)
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
