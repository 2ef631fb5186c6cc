"""The edge's gRPC client of a remote core: one channel, every call with a deadline, retries
for idempotent calls only, and the core's errors turned back into domain errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from opentelemetry.trace import SpanKind, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keel.domain.errors import DeadlineExceeded
from keel.observability.context import current_request_id
from keel.profiles.v1 import profiles_pb2_grpc as pb_grpc
from keel.resilience.deadline import remaining
from keel.resilience.retry import RetryPolicy
from keel.rpc.status import CoreUnreachable, from_status

Reply = TypeVar("Reply")
ON_BEHALF_OF = "keel-on-behalf-of"  # must match keel.api.grpc.admission
_propagator = TraceContextTextMapPropagator()


def _retryable(error: BaseException) -> bool:
    # Only a call that never reached the core (or whose answer was lost) is retried: the core
    # retries its own database reads, and an overloaded core must not get more work.
    return isinstance(error, CoreUnreachable)


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
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
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
        on_behalf_of: str | None,
        idempotent: bool,
    ) -> Reply:
        """One call, within the request's deadline; idempotent calls are retried (capped
        backoff, full jitter, within the retry budget) when the core could not be reached."""

        async def attempt() -> Reply:
            left = remaining()
            timeout = self._timeout if left is None else min(self._timeout, left)
            if timeout <= 0:
                raise DeadlineExceeded("The request's deadline passed before the core was called.")
            metadata = [self._authorization]
            if on_behalf_of is not None:
                metadata.append((ON_BEHALF_OF, on_behalf_of))
            request_id = current_request_id()
            if request_id is not None:
                metadata.append(("x-request-id", request_id))
            span = self._tracer.start_span(name, kind=SpanKind.CLIENT)
            carrier: dict[str, str] = {}
            _propagator.inject(carrier, context=set_span_in_context(span))
            metadata.extend(carrier.items())
            try:
                return await method(request, timeout=timeout, metadata=tuple(metadata))
            except grpc.aio.AioRpcError as error:
                raise from_status(
                    error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
                ) from None
            except grpc.aio.UsageError:
                # The channel was closed under the call: this edge is shutting down.
                raise CoreUnreachable("The connection to the core is closed.") from None
            finally:
                span.end()

        if not idempotent:
            return await attempt()
        return await self._retry.run(attempt, retryable=_retryable)

    async def check_health(self, wait_seconds: float = 1.0) -> str:
        """The core's standard health status ("SERVING" when ready)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub: Any = health_pb2_grpc.HealthStub(self._channel)  # its stubs lack the methods
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=wait_seconds)
        except grpc.aio.AioRpcError as error:
            raise CoreUnreachable(f"The core's health check failed ({error.code().name}).") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        await self._channel.close()
