"""The fast path for plain subtrees answers exactly what graphql-core's standard execution
answers, errors included."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
import strawberry
from graphql import ExecutionResult, execute, parse
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from keel.api.graphql.execution import executor_for, plain_types
from keel.api.graphql.schema import build_schema, graphql_core_schema


@strawberry.type
class Tag:
    name: str
    weight: int | None


@strawberry.type
class Item:
    id: strawberry.ID
    title: str
    tags: list[Tag]
    note: str | None

    @strawberry.field
    def shout(self) -> str:
        return self.title.upper()


@dataclass
class Broken:
    """Claims to be an Item but has no title: the standard path must report it."""

    id: str = "b"
    title: Any = None
    tags: Any = ()
    note: Any = None


def items() -> list[Any]:
    return [
        Item(
            id=strawberry.ID("1"),
            title="one",
            tags=[Tag(name="a", weight=1), Tag(name="b", weight=None)],
            note=None,
        ),
        Item(id=strawberry.ID("2"), title="two", tags=[], note="n"),
    ]


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item]:
        return items()

    @strawberry.field
    def broken(self) -> list[Item]:
        return [items()[0], Broken()]


SCHEMA = graphql_core_schema(strawberry.Schema(query=Query))
FAST = executor_for(SCHEMA)


def run(
    query: str, executor: type[StrawberryGraphQLCoreExecutionContext], **variables: Any
) -> ExecutionResult:
    result = execute(SCHEMA, parse(query), variable_values=variables, executor_class=executor)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    assert isinstance(result, ExecutionResult)
    return result


def test_plain_types_are_the_ones_without_resolvers() -> None:
    assert plain_types(SCHEMA) == frozenset({"Tag"})  # Item has a resolver (shout)
    keel = plain_types(graphql_core_schema(build_schema()))
    assert {"Profile", "Email", "Link", "ProfileEdge", "ProfileConnection", "PageInfo"} <= keel
    assert "Query" not in keel
    assert "Mutation" not in keel


@pytest.mark.parametrize(
    "query",
    [
        "{ items { id tags { name weight } } }",
        "{ items { __typename t: title tags { w: weight n: name __typename } } }",
        "query Q($skip: Boolean!) { items { tags { name weight @skip(if: $skip) } } }",
        "{ items { ...F tags { ... on Tag { name } ...G } } }"
        " fragment F on Item { note } fragment G on Tag { weight }",
        "{ items { tags { name } tags { weight } } }",
    ],
)
def test_fast_path_answers_as_the_standard_path(query: str) -> None:
    standard = run(query, StrawberryGraphQLCoreExecutionContext, skip=True)
    fast = run(query, FAST, skip=True)
    assert standard.errors is None
    assert fast.data == standard.data
    assert list(fast.data or {}) == list(standard.data or {})


def test_a_null_in_a_non_null_field_is_reported_as_by_the_standard_path() -> None:
    query = "{ broken { id title } }"
    standard = run(query, StrawberryGraphQLCoreExecutionContext)
    fast = run(query, FAST)
    assert fast.data == standard.data
    assert [e.formatted for e in fast.errors or ()] == [e.formatted for e in standard.errors or ()]
    assert fast.errors
