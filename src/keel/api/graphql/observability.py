"""Metrics labels with bounded cardinality, and resolver spans for sampled requests only."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import Any

from graphql import GraphQLResolveInfo
from opentelemetry.trace import Tracer, use_span

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ANONYMOUS = "anonymous"
OTHER = "other"
_ROOT_TYPES = frozenset({"Query", "Mutation"})


class OperationLabels:
    """Operation names as metric labels: the first `capacity` well-formed names are kept, every
    later or malformed name shares `other`, an operation without a name is `anonymous`. Names
    are only offered for documents that passed validation."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._known: set[str] = set()

    def label(self, name: str | None) -> str:
        if name is None:
            return ANONYMOUS
        if name in self._known:
            return name
        if len(self._known) < self._capacity and _NAME.match(name) and name not in (ANONYMOUS, OTHER):
            self._known.add(name)
            return name
        return OTHER


class ResolverSpans:
    """graphql-core middleware: a span per root field (each is one use-case call). Installed only
    on operations whose own span is recording, so unsampled requests pay nothing."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def resolve(
        self, next_: Callable[..., Any], root: Any, info: GraphQLResolveInfo[Any], **args: Any
    ) -> Any:
        if info.parent_type.name not in _ROOT_TYPES:
            return next_(root, info, **args)
        span = self._tracer.start_span(
            f"resolve {info.parent_type.name}.{info.field_name}",
            attributes={"graphql.field.path": ".".join(str(p) for p in info.path.as_list())},
        )
        with use_span(span, end_on_exit=False, record_exception=True, set_status_on_exception=True):
            try:
                result = next_(root, info, **args)
            except BaseException:
                span.end()
                raise
        if not isawaitable(result):
            span.end()
            return result
        return _ended_after(result, span)


async def _ended_after(result: Awaitable[Any], span: Any) -> Any:
    with use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        return await result
