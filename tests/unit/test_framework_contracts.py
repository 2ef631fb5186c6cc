"""Contracts for Keel's reaches into framework internals: one module per framework holds them
(`keel.api.rest.cadwyn_internals`, `keel.api.graphql.strawberry_internals`,
`keel.api.graphql.graphql_core_internals`, `keel.observability.opentelemetry_internals`), and
these tests fail loudly when an upgrade moves what they rely on. The version check fails on
any upgrade at all: re-check the module named in its message, then update the version here.
See docs/decisions/0001-framework-internals.md."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import cadwyn
import cadwyn.applications
import graphql
import pytest
from graphql import GraphQLError, GraphQLSchema, parse
from graphql.execution.executor import Executor

from keel.api.graphql.graphql_core_internals import EXECUTE_SUBFIELDS, TOKEN_LIMIT_MESSAGE
from keel.api.graphql.schema import build_schema
from keel.api.graphql.strawberry_internals import (
    FIELD_DEFINITION,
    IS_AWAITABLE,
    ExecutionContext,
    StrawberryField,
    core_schema,
)
from keel.observability.tracing import PropagatingTracer

# The versions the internals modules were last checked against, and the module to re-check.
CHECKED = {
    "cadwyn": ("9.0.0", "keel/api/rest/cadwyn_internals.py"),
    "strawberry-graphql": ("0.341.2", "keel/api/graphql/strawberry_internals.py"),
    "graphql-core": ("3.3.2", "keel/api/graphql/graphql_core_internals.py"),
    "opentelemetry-api": ("1.45.2", "keel/observability/opentelemetry_internals.py"),
}


@pytest.mark.parametrize("distribution", sorted(CHECKED))
def test_the_installed_framework_is_the_one_the_internals_were_checked_against(distribution: str) -> None:
    checked, module = CHECKED[distribution]
    installed = version(distribution)
    assert installed == checked, (
        f"{distribution} is {installed}, the internals in {module} were checked against {checked}:"
        " re-check them (and their contract tests), then update CHECKED"
    )


def test_cadwyn_still_has_what_cadwyn_internals_replaces_and_hooks() -> None:
    # Looked up in the module's namespace, where cadwyn_internals replaces it: cadwyn.applications
    # imports the name from cadwyn.middleware without exporting it.
    assert callable(vars(cadwyn.applications)["_generate_api_version_dependency"])
    assert callable(cadwyn.Cadwyn._cadwyn_initialize)


def test_strawberry_keeps_its_graphql_core_schema_and_field_definitions() -> None:
    core = core_schema(build_schema())
    assert isinstance(core, GraphQLSchema)
    profile = core.get_type("Profile")
    assert isinstance(profile, graphql.GraphQLObjectType)
    assert isinstance(profile.fields["handle"].extensions.get(FIELD_DEFINITION), StrawberryField)
    assert issubclass(ExecutionContext, Executor)


async def test_strawberrys_awaitable_check_tells_awaitables_apart() -> None:
    async def coroutine() -> None:
        return None

    pending = coroutine()
    assert IS_AWAITABLE(pending) is True
    await pending
    assert IS_AWAITABLE(1) is False


def test_graphql_core_still_executes_collected_subfields_with_these_parameters() -> None:
    # graphql-core calls it positionally; the last parameter's name differs between its plain
    # and incremental executors (position_context, delivery_group_map), so only its place counts.
    parameters = list(inspect.signature(getattr(ExecutionContext, EXECUTE_SUBFIELDS)).parameters)
    assert len(parameters) == 7
    assert parameters[:6] == [
        "self",
        "parent_type",
        "source_value",
        "path",
        "grouped_field_set",
        "new_defer_usages",
    ]


def test_graphql_core_names_its_token_limit_in_these_words() -> None:
    with pytest.raises(GraphQLError) as raised:
        parse("{ a b c d e }", max_tokens=3)
    assert TOKEN_LIMIT_MESSAGE in raised.value.message


def test_the_propagating_tracer_starts_current_spans_as_the_api_does() -> None:
    tracer = PropagatingTracer()
    with tracer.start_as_current_span("as a context manager") as span:
        assert span.get_span_context().is_valid

    @tracer.start_as_current_span("as a decorator")
    def decorated() -> bool:
        return graphql.version is not None

    assert decorated()
