"""The edge's gRPC client of a remote core: one channel, every call with a deadline, retries
for idempotent calls only, and the core's errors turned back into domain errors."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keel.api.grpc.wire.metadata import CONSISTENCY_TOKEN, EDGE, ON_BEHALF_OF, ON_BEHALF_OF_SHA256, REQUEST_ID
from keel.api.grpc.wire.status import (
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    CoreTimedOut,
    CoreUnreachable,
    EdgeRejected,
    from_status,
)
from keel.api.grpc.wire.v1 import profiles_pb2 as pb
from keel.api.grpc.wire.v1 import profiles_pb2_grpc as pb_grpc
from keel.domain.api_keys import Principal
from keel.domain.errors import DeadlineExceeded, OutcomeUnknown, Unavailable, ValidationFailed
from keel.observability.context import current_request_id
from keel.resilience.deadline import remaining
from keel.resilience.retry import RetryPolicy
from keel.service.consistency import format_position, note_commit, parse_position, required_position

Reply = TypeVar("Reply")
_propagator = TraceContextTextMapPropagator()
_log = structlog.get_logger("keel.remote")
_SERVICE_OF = {
    name: service.full_name
    for service in pb.DESCRIPTOR.services_by_name.values()
    for name in service.methods_by_name
}


def _retryable(error: BaseException) -> bool:
    # Only a call that never reached the core (or whose answer was lost) is retried: the core
    # retries its own database reads, and an overloaded core must not get more work.
    return isinstance(error, CoreUnreachable)


def _note_core_position(trailing: Any) -> None:
    for key, value in trailing or ():
        if key == CONSISTENCY_TOKEN and isinstance(value, str):
            # From the core this edge is configured with; a malformed one is its bug, not the
            # caller's: the write stands, only its token is not passed on.
            with contextlib.suppress(ValidationFailed):
                note_commit(parse_position(value))


class CoreClient:
    def __init__(
        self,
        target: str,
        edge_token: str,
        retry: RetryPolicy,
        tracer: Tracer,
        *,
        timeout_seconds: float,
    ) -> None:
        host, _, port = target.rpartition(":")
        self._server: dict[str, str | int] = (
            {"server.address": host, "server.port": int(port)} if port.isdigit() else {}
        )
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                # A core that restarts is back within a second, not after gRPC's default backoff
                # (which grows to two minutes): the link is internal and cheap to retry.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1_000),
            ],
        )
        self.profiles = pb_grpc.ProfileServiceStub(self._channel)
        self.callers = pb_grpc.CallerServiceStub(self._channel)
        self._authorization = ("authorization", f"Bearer {edge_token}")
        self._retry = retry
        self._tracer = tracer
        self._timeout = timeout_seconds

    async def call(
        self,
        method: Callable[..., Awaitable[Reply]],
        request: Any,
        *,
        name: str,
        on_behalf_of: Principal | None,
        idempotent: bool,
    ) -> Reply:
        """One call, within the request's deadline; idempotent calls are retried (capped
        backoff, full jitter, within the retry budget) when the core could not be reached. A
        call that is not idempotent and got no answer has an unknown outcome (`OutcomeUnknown`):
        the core may have done it."""

        async def attempt() -> Reply:
            left = remaining()
            timeout = self._timeout if left is None else min(self._timeout, left)
            if timeout <= 0:
                raise DeadlineExceeded("The request's deadline passed before the core was called.")
            metadata = [self._authorization, (EDGE, "1")]
            if on_behalf_of is not None:
                metadata.append((ON_BEHALF_OF, on_behalf_of.key_id))
                metadata.append((ON_BEHALF_OF_SHA256, on_behalf_of.token_sha256 or ""))
            request_id = current_request_id()
            if request_id is not None:
                metadata.append((REQUEST_ID, request_id))
            # Read-your-writes through the edge: the position the request must read at (the
            # caller's token, or this request's own earlier write) goes to the core, and the
            # position the core's write reached comes back for the edge's answer.
            position = required_position()
            if position is not None:
                metadata.append((CONSISTENCY_TOKEN, format_position(position)))
            span = self._tracer.start_span(f"{_SERVICE_OF[name]}/{name}", kind=SpanKind.CLIENT)
            if span.is_recording():
                span.set_attribute("rpc.system", "grpc")
                span.set_attribute("rpc.service", _SERVICE_OF[name])
                span.set_attribute("rpc.method", name)
                span.set_attributes(self._server)
            carrier: dict[str, str] = {}
            _propagator.inject(carrier, context=set_span_in_context(span))
            metadata.extend(carrier.items())
            try:
                # A grpc.aio call: its answer, then its trailing metadata.
                call: Any = method(request, timeout=timeout, metadata=tuple(metadata))
                reply: Reply = await call
                _note_core_position(await call.trailing_metadata())
                return reply
            except grpc.aio.AioRpcError as error:
                span.set_attribute("rpc.grpc.status_code", error.code().value[0])
                failure = from_status(
                    error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
                )
                if isinstance(failure, EdgeRejected):
                    _log.error("edge_key_rejected", detail=failure.detail)  # an operator must act
                if isinstance(failure, Unavailable):
                    span.set_status(Status(StatusCode.ERROR))
                raise failure from None
            except grpc.aio.UsageError:
                # The channel was closed under the call: this edge is shutting down.
                raise CoreUnreachable("The connection to the core is closed.") from None
            finally:
                span.end()

        if idempotent:
            return await self._retry.run(attempt, retryable=_retryable)
        try:
            return await attempt()
        except (CoreUnreachable, CoreTimedOut):
            raise OutcomeUnknown(
                "The core did not answer; the change may or may not have been made. Read the "
                "profile before trying again."
            ) from None

    async def check_health(self, wait_seconds: float = 1.0) -> str:
        """The core's standard health status ("SERVING" when ready)."""
        stub: Any = health_pb2_grpc.HealthStub(self._channel)  # its stubs lack the methods
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=wait_seconds)
        except grpc.aio.AioRpcError as error:
            raise CoreUnreachable(f"The core's health check failed ({error.code().name}).") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when the core's health service says SERVING and the core accepts this edge's
        key (a revoked edge key would otherwise look like every caller's key being wrong)."""
        try:
            status = (await self.check_health()).lower().replace("_", " ")
        except CoreUnreachable:
            status = "unreachable"
        checks = {"core": status, "edge_key": "unknown"}
        if status == "serving":
            try:
                await self.call(
                    self.callers.GetCaller,
                    pb.GetCallerRequest(),
                    name="GetCaller",
                    on_behalf_of=None,
                    idempotent=False,
                )
                checks["edge_key"] = "accepted"
            except EdgeRejected:
                checks["edge_key"] = "rejected"
            except Unavailable:
                pass
        return checks == {"core": "serving", "edge_key": "accepted"}, checks

    async def close(self) -> None:
        await self._channel.close()
