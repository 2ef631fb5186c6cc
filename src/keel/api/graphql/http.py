"""GraphQL over HTTP at `/graphql`: GET and POST, persisted queries, limits and cost before
execution, admission through the same per-client rate limits and load shedder as REST, then one
execution on graphql-core.

The request path, top to bottom: authenticate (`authenticate`), read the parameters
(`read_params`), resolve a persisted query (`_query_text`), parse, bound the fields that merge
(`check_merged_fields`) and validate, once per distinct query text (`_prepare`), pick the
operation and check its shape, price it (`operation_cost`), admit (`above_burst`, `Admission.enter`),
execute (`_execute`), answer with `extensions.cost` (and an ETag when sent with GET).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter
from graphql import (
    DocumentNode,
    GraphQLError,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    OperationType,
    execute,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)
from opentelemetry.trace import Span
from starlette.requests import Request
from starlette.responses import Response

from keel.admission import Admission, Caller, Outcome, Refusal, bearer_token
from keel.api.browser_pages.graphiql import graphiql_page
from keel.api.http.client_address import client_address
from keel.api.http.conditional import etag_matches
from keel.api.http.request_state import request_state
from keel.config import Settings
from keel.observability.metrics import Metrics
from keel.support.lru import BoundedLRU

from .admission import above_burst, limit_headers, operation_of, remaining_after
from .context import CostMeter, GraphQLContext
from .errors import PARSE_FAILED, VALIDATION_FAILED, format_error, request_error, slo_outcome
from .execution import executor_for
from .graphql_core_internals import TOKEN_LIMIT_MESSAGE
from .limits import LimitExceeded, Limits, Price, check_merged_fields, check_shape, operation_cost
from .observability import OperationLabels, ResolverSpans
from .persisted import (
    NOT_FOUND_CODE,
    NOT_FOUND_MESSAGE,
    NOT_SUPPORTED_CODE,
    NOT_SUPPORTED_MESSAGE,
    PersistedQueries,
    SharedQueries,
    query_hash,
)
from .request import JSON_MEDIA_TYPE, Params, Refused, idempotency_key, read_params, wants_ide
from .schema import build_schema
from .strawberry_internals import IS_AWAITABLE, core_schema

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import Tracer

    from keel.ratelimit.guard import RateLimitOutcome
    from keel.service.use_cases import EndUserUseCases, PersonalDataUseCases, ProfileUseCases


class GraphQLServices(Protocol):
    """What the GraphQL endpoint needs of the process (the app state's `services`)."""

    @property
    def admission(self) -> Admission: ...
    @property
    def profiles(self) -> ProfileUseCases: ...
    @property
    def personal_data(self) -> PersonalDataUseCases | None: ...
    @property
    def end_users(self) -> EndUserUseCases | None: ...
    @property
    def tracer(self) -> Tracer: ...
    @property
    def persisted_queries(self) -> SharedQueries | None: ...


PATH = "/graphql"
_DOCUMENT_CACHE_SIZE = 256
# A parsed document takes some 130 times its text in memory (1 MB for a query of 2,000 tokens),
# so the cache is bounded by the text it holds as well: at most some 35 MB of syntax trees.
_DOCUMENT_CACHE_TEXT = 256 * 1024
# graphql-core's suggestions, at the end of a validation message.
_SCHEMA_HINT = re.compile(r" Did you mean [^?]*\?$")
_SHA256 = re.compile(r"[0-9a-f]{64}")  # what a persisted query's key in the fleet's store may be


@dataclass
class _Prepared:
    """A parsed, validated document; the operations in it whose shape passed the limits."""

    document: DocumentNode
    within_limits: dict[str | None, OperationDefinitionNode] = field(default_factory=dict)


def install_graphql(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Serve GraphQL at `/graphql` (GET and POST) on `app`."""
    endpoint = GraphQLEndpoint(settings, metrics)
    router = APIRouter()
    # An API route (not a bare Starlette one) so that the request envelope sees its template.
    router.add_api_route(PATH, endpoint.handle, methods=["GET", "POST"], include_in_schema=False)
    app.include_router(router)


class GraphQLEndpoint:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.schema = build_schema()
        self._core = core_schema(self.schema)
        self._executor = executor_for(self._core)
        self._rules = [*specified_rules]
        if not settings.graphql_introspection:
            self._rules.append(NoSchemaIntrospectionCustomRule)
        # Without introspection, validation's "Did you mean 'handle'?" would rebuild the schema
        # name by name: such hints are cut from messages too.
        self._hint_schema = settings.graphql_introspection
        self._limits = Limits(
            max_depth=settings.graphql_max_depth,
            max_aliases=settings.graphql_max_aliases,
            max_cost=settings.graphql_max_cost,
        )
        self._max_document_bytes = settings.graphql_max_document_bytes
        self._max_tokens = settings.graphql_max_tokens
        self._documents: BoundedLRU[str, _Prepared] = BoundedLRU(
            _DOCUMENT_CACHE_SIZE, _DOCUMENT_CACHE_TEXT, lambda query, _: len(query)
        )
        self.persisted = PersistedQueries(settings.graphql_persisted_queries)
        self._labels = OperationLabels(settings.graphql_metric_operation_names)
        self._metrics = metrics
        self._trusted_hops = settings.trusted_proxy_hops
        self._get_cache_control = f"private, max-age={settings.graphql_get_max_age_seconds}"
        self._graphiql = settings.graphql_graphiql
        persisted = metrics.graphql_persisted_queries
        self._persisted_outcomes = {name: persisted.labels(name) for name in ("hit", "miss", "registered")}

    # ------------------------------------------------------------------------------- request

    async def handle(self, request: Request) -> Response:
        keel: GraphQLServices = request.app.state.services
        admission = keel.admission
        is_get = request.method == "GET"
        if is_get and self._graphiql and wants_ide(request):
            return graphiql_page()
        # Who is asking comes first, as on REST: every request is charged to its client,
        # refused ones included.
        caller = await admission.identify(
            bearer_token(request.headers.get("authorization")),
            lambda: client_address(request.scope, self._trusted_hops),
            repeated=len(request.headers.getlist("authorization")) > 1,
        )
        requested: int | None = None
        try:
            params = await read_params(request)
            query = await self._query_text(params, keel.persisted_queries)
            prepared = self._prepare(query)
            operation = self._operation(prepared, params.operation_name)
            if is_get and operation.operation is not OperationType.QUERY:
                raise Refused(
                    405,
                    [request_error("METHOD_NOT_ALLOWED", "Mutations must be sent with POST.")],
                    {"Allow": "POST"},
                )
            price = operation_cost(
                self._core,
                prepared.document,
                operation,
                params.variables,
                admission.catalog.costs,
                self._limits,
            )
            requested = price.requested
            if params.persisted_hash is not None and params.query is not None:
                # Only documents that are valid and within the limits, cost included, take a
                # place in the store.
                self.persisted.put(params.persisted_hash, query)
                self._persisted_outcomes["registered"].inc()
            replay_key = idempotency_key(request)
        except Refused as refused:
            return await self._refuse(admission, caller, refused, requested)
        except LimitExceeded as exceeded:
            error = request_error(exceeded.code, exceeded.message, **exceeded.extensions)
            return await self._refuse(admission, caller, Refused(200, [error]), requested)
        name = params.operation_name or (operation.name.value if operation.name else None)
        label = self._labels.label(name)
        self._metrics.graphql_operation_cost.labels(label).observe(requested)
        return await self._admit_and_execute(
            request, keel, caller, prepared.document, operation, params, label, price, replay_key
        )

    async def _refuse(
        self, admission: Admission, caller: Caller, refused: Refused, requested: int | None
    ) -> Response:
        """Answer a request refused before execution. It is charged like REST's cheapest request
        (one `other` unit), so that malformed or oversized documents are rate limited too."""
        self._count(None, None, "rejected")
        headers = refused.headers
        charged = admission.catalog.cost_of("other")
        remaining = None
        limits = await admission.charge(caller, charged)
        if isinstance(limits, Refusal):
            return _rate_limited(limits, requested)
        if limits is not None:
            headers = {**headers, **limit_headers(limits)}
            remaining = remaining_after(limits, 0)
        return _json_response(
            refused.status, None, refused.errors, requested, charged, headers, remaining=remaining
        )

    @staticmethod
    async def _share_registration(keel: GraphQLServices, caller: Caller, params: Params) -> None:
        """A query registered by a caller with a valid API key, once admitted (charged to its rate
        limit), is shared with the fleet: an anonymous flood of registrations never reaches
        Redis. Valid, within the limits and the cost: checked before, in `handle`."""
        shared = keel.persisted_queries
        if (
            shared is not None
            and caller.principal is not None
            and caller.principal.end_user is None  # the fleet's queries are the apps', not end users'
            and params.persisted_hash is not None
            and params.query is not None
            and _SHA256.fullmatch(params.persisted_hash)
        ):
            await shared.put(params.persisted_hash, params.query)

    async def _query_text(self, params: Params, shared: SharedQueries | None) -> str:
        """The query, sent as text or known by its hash (automatic persisted queries): this
        process's own, else the fleet's (`shared`)."""
        if params.persisted_hash is None:
            if params.query is None:
                raise Refused(400, [request_error("BAD_REQUEST", "The request has no `query`.")])
            query = params.query
        elif self.persisted.capacity <= 0:
            raise Refused(200, [request_error(NOT_SUPPORTED_CODE, NOT_SUPPORTED_MESSAGE)])
        elif params.query is None:
            known = self.persisted.get(params.persisted_hash)
            if known is None and shared is not None and _SHA256.fullmatch(params.persisted_hash):
                known = await shared.get(params.persisted_hash)
                if known is not None and query_hash(known) != params.persisted_hash:
                    known = None  # not the query of that hash: as unknown
                if known is not None:
                    self.persisted.put(params.persisted_hash, known)
            if known is None:
                self._persisted_outcomes["miss"].inc()
                raise Refused(200, [request_error(NOT_FOUND_CODE, NOT_FOUND_MESSAGE)])
            self._persisted_outcomes["hit"].inc()
            query = known
        else:
            if query_hash(params.query) != params.persisted_hash:
                raise Refused(400, [request_error("BAD_REQUEST", "provided sha does not match query")])
            query = params.query
        if len(query) > self._max_document_bytes or len(query.encode()) > self._max_document_bytes:
            raise LimitExceeded(
                "DOCUMENT_TOO_LARGE",
                f"The query is longer than {self._max_document_bytes} bytes.",
                maxBytes=self._max_document_bytes,
            )
        return query

    def _prepare(self, query: str) -> _Prepared:
        """Parse and validate, once per distinct query text (a bounded cache of successes)."""
        prepared = self._documents.get(query)
        if prepared is not None:
            return prepared
        try:
            document = parse(query, max_tokens=self._max_tokens)
        except GraphQLError as error:
            code = "TOKEN_LIMIT_EXCEEDED" if TOKEN_LIMIT_MESSAGE in error.message else PARSE_FAILED
            formatted = format_error(error, during_execution=False)
            formatted["extensions"] = {"code": code}
            raise Refused(200, [formatted]) from None
        check_merged_fields(document)
        errors = validate(self._core, document, self._rules, max_errors=20)
        if errors:
            refusals = [format_error(e, during_execution=False) for e in errors]
            if not self._hint_schema:
                for refusal in refusals:
                    refusal["message"] = _SCHEMA_HINT.sub("", refusal["message"])
            raise Refused(200, refusals)
        prepared = _Prepared(document)
        self._documents.put(query, prepared)
        return prepared

    def _operation(self, prepared: _Prepared, name: str | None) -> OperationDefinitionNode:
        operation = prepared.within_limits.get(name)
        if operation is not None:
            return operation
        operation = get_operation_ast(prepared.document, name)
        if operation is None:
            message = f"Unknown operation named '{name}'." if name else "Name the operation to run."
            raise Refused(200, [request_error(VALIDATION_FAILED, message)])
        check_shape(self._core, prepared.document, operation, self._limits)
        prepared.within_limits[name] = operation
        return operation

    # ------------------------------------------------------------------------------- admission

    async def _admit_and_execute(
        self,
        request: Request,
        keel: GraphQLServices,
        caller: Caller,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        params: Params,
        label: str,
        price: Price,
        idempotency_key: str | None,
    ) -> Response:
        admission = keel.admission
        requested = price.requested
        op_type = operation.operation.value
        admitted_at = time.perf_counter()
        if admission.rate_limited:
            too_dear = above_burst(admission.plan_of(caller), requested)
            if too_dear is not None:
                # Refused like any other request refused before execution: one unit, so that
                # sending operations no plan can afford is not a way round the rate limits.
                return await self._refuse(admission, caller, Refused(200, [too_dear]), requested)
        table_operation, latency_class = operation_of(document, operation)
        entered = await admission.enter(caller, table_operation, cost=requested, latency_class=latency_class)
        if isinstance(entered, Refusal):
            self._count(label, op_type, "rejected")
            self._served(op_type, "caller_error" if entered.kind == "quota" else "server_error", admitted_at)
            if entered.kind == "quota":
                return _rate_limited(entered, requested)
            request_state().refused = True
            error = request_error("UNAVAILABLE", "The service is shedding load; retry shortly.")
            return _json_response(503, None, [error], requested, None, {"Retry-After": "1"})
        catalog = admission.catalog
        meter = CostMeter(catalog.costs, spent=price.fixed)
        # What an executed operation costs at least, however few use cases it called (none for
        # `viewer`): REST's cheapest request. The rest of the price is refunded.
        minimum = catalog.cost_of("other")
        status = 200
        succeeded = False
        outcome = "server_error"  # until an answer is built: a failure on the way is the server's
        try:
            # Inside: whatever ends the request from here (a cancellation too) finishes the ticket.
            await self._share_registration(keel, caller, params)
            context = GraphQLContext(
                keel.profiles,
                caller.principal,
                caller.error,
                meter,
                idempotency_key,
                keel.personal_data,
                keel.end_users,
            )
            data, errors = await self._execute(keel.tracer, document, params, context, label, op_type)
            succeeded = not errors
            self._count(label, op_type, "ok" if not errors else "error")
            charged = max(minimum, meter.spent)
            response = self._respond(request, data, errors, requested, charged, entered.limits)
            status = response.status_code
            outcome = slo_outcome(errors)
            return response
        finally:
            self._served(op_type, outcome, admitted_at)
            # A 304: revalidation is rewarded, as on REST. Otherwise the units asked for but not
            # spent: lookups batched into one call, repeated ones answered by the loaders,
            # fields never reached after an error.
            unused = requested if status == 304 else max(0, requested - max(minimum, meter.spent))
            await entered.finish(Outcome(succeeded=succeeded, unused=unused))

    # ------------------------------------------------------------------------------- execution

    async def _execute(
        self,
        tracer: Tracer,
        document: DocumentNode,
        params: Params,
        context: GraphQLContext,
        label: str,
        op_type: str,
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        started = time.perf_counter()
        with tracer.start_as_current_span(f"graphql {op_type} {label}") as span:
            middleware = [ResolverSpans(tracer)] if span.is_recording() else None
            result: Any = execute(
                self._core,
                document,
                context_value=context,
                variable_values=params.variables,
                operation_name=params.operation_name,
                middleware=middleware,
                executor_class=self._executor,
                is_awaitable=IS_AWAITABLE,
            )
            if isawaitable(result):
                result = await result
            errors = [format_error(e, during_execution=True) for e in result.errors or ()]
            if span.is_recording():
                _describe(span, label, op_type, context, errors)
        self._metrics.graphql_operation_duration.labels(label).observe(time.perf_counter() - started)
        return result.data, errors

    def _respond(
        self,
        request: Request,
        data: dict[str, Any] | None,
        errors: list[dict[str, Any]],
        requested: int,
        charged: int,
        limits: RateLimitOutcome | None,
    ) -> Response:
        headers = limit_headers(limits) if limits is not None else {}
        remaining = remaining_after(limits, requested - charged) if limits is not None else None
        if request.method != "GET" or errors:
            headers["Cache-Control"] = "no-store"
            return _json_response(
                200, data, errors, requested, charged, headers, remaining=remaining, executed=True
            )
        # A query sent with GET, answered without errors: cacheable by the caller, revalidated
        # by ETag. The tag covers data only, not the cost (which changes with every request).
        result = _dumps({"data": data})
        tag = '"' + hashlib.sha256(result.encode()).hexdigest()[:32] + '"'
        headers.update(
            {
                "ETag": tag,
                "Cache-Control": self._get_cache_control,
                "Vary": "Authorization, Keel-Consistency-Token",  # a token read never gets an older answer
            }
        )
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and etag_matches(if_none_match, tag):
            return Response(status_code=304, headers=headers)
        extensions = _dumps({"cost": _cost(requested, charged, remaining)})
        body = f'{result[:-1]},"extensions":{extensions}}}'
        return Response(body, media_type=JSON_MEDIA_TYPE, headers=headers)

    def _served(self, op_type: str, outcome: str, admitted_at: float) -> None:
        self._metrics.graphql_request_duration.labels(op_type, outcome).observe(
            time.perf_counter() - admitted_at
        )

    def _count(self, label: str | None, op_type: str | None, outcome: str) -> None:
        self._metrics.graphql_operations.labels(label or "unparsed", op_type or "unknown", outcome).inc()


# ----------------------------------------------------------------------------------- helpers


def _rate_limited(refusal: Refusal, requested: int | None) -> Response:
    """A refusal by the rate limits, as a GraphQL error with code `RATE_LIMITED`."""
    request_state().refused = True
    assert refusal.limits is not None  # a quota refusal always carries its decision
    error = request_error(
        "RATE_LIMITED",
        refusal.detail,
        retryAfter=refusal.retry_after_seconds,
        violatedPolicies=refusal.violated_policies,
    )
    headers = {"Retry-After": str(refusal.retry_after_seconds), **limit_headers(refusal.limits)}
    return _json_response(429, None, [error], requested, None, headers, remaining=0)


def _cost(requested: int | None, actual: int | None, remaining: int | None) -> dict[str, int | None]:
    return {"requested": requested, "actual": actual, "remaining": remaining}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_response(
    status: int,
    data: dict[str, Any] | None,
    errors: list[dict[str, Any]],
    requested: int | None,
    actual: int | None,
    headers: dict[str, str],
    *,
    remaining: int | None = None,
    executed: bool = False,
) -> Response:
    """`data` is present once execution started (null if it failed at the root), absent when
    the request was refused before."""
    body: dict[str, Any] = {}
    if errors:
        body["errors"] = errors
    if executed:
        body["data"] = data
    body["extensions"] = {"cost": _cost(requested, actual if actual is not None else 0, remaining)}
    headers.setdefault("Cache-Control", "no-store")
    return Response(_dumps(body), status_code=status, media_type=JSON_MEDIA_TYPE, headers=headers)


def _describe(
    span: Span, label: str, op_type: str, context: GraphQLContext, errors: list[dict[str, Any]]
) -> None:
    span.set_attribute("graphql.operation.name", label)
    span.set_attribute("graphql.operation.type", op_type)
    span.set_attribute("keel.graphql.cost.actual", context.meter.spent)
    if errors:
        span.set_attribute("keel.graphql.errors", len(errors))
