"""Limits and cost decided on the document alone, before execution."""

from __future__ import annotations

import pytest
from graphql import OperationDefinitionNode, build_schema, get_operation_ast, parse

from keel.api.graphql.limits import LimitExceeded, Limits, check_shape, count_aliases, operation_cost
from keel.api.graphql.observability import OperationLabels
from keel.api.graphql.persisted import PersistedQueries, query_hash
from keel.api.graphql.schema import build_schema as build_keel_schema
from keel.api.graphql.schema import graphql_core_schema
from keel.ratelimit.catalog import DEFAULT_COSTS

LIMITS = Limits(max_depth=10, max_aliases=15, max_cost=10_000)
KEEL = graphql_core_schema(build_keel_schema())
# A schema with nested connections, to show costs multiplying through the tree.
NESTED = build_schema(
    """
    type Query { people(first: Int = 20): Connection! person(id: ID!): Person }
    type Connection { edges: [Edge!]! }
    type Edge { node: Person! }
    type Person { id: ID! friends(first: Int = 20): Connection! }
    """
)
NESTED_PRICES = {
    "Query.people": "profiles.list",
    "Person.friends": "profiles.list",
    "Query.person": "profiles.get",
}


def operation(query: str) -> tuple[object, OperationDefinitionNode]:
    document = parse(query)
    found = get_operation_ast(document)
    assert found is not None
    return document, found


def cost(query: str, variables: dict[str, object] | None = None, schema: object = KEEL, **kw: object) -> int:
    document, op = operation(query)
    return operation_cost(schema, document, op, variables or {}, DEFAULT_COSTS, LIMITS, **kw)  # type: ignore[arg-type]


def test_costs_are_priced_like_rest() -> None:
    assert cost("{ viewer { keyId } }") == 1  # nothing to fetch: the minimum
    assert cost('{ profile(id: "a") { id } }') == DEFAULT_COSTS["profiles.get"]
    assert cost('{ a: profile(id: "a") { id } b: profile(id: "b") { id } }') == 2
    assert cost("{ profiles(first: 100) { edges { node { emails { address } links { url } } } } }") == 10
    assert cost('{ profileByHandle(handle: "x") { id } }') == DEFAULT_COSTS["profiles.list"]
    mutation = 'mutation { createProfile(input: {handle: "h", emails: []}) { replayed } }'
    assert cost(mutation) == DEFAULT_COSTS["profiles.create"]


def test_connection_sizes_multiply_through_the_tree() -> None:
    query = """{ people(first: 10) { edges { node {
        friends(first: 5) { edges { node { friends(first: 3) { edges { node { id } } } } } }
    } } } }"""
    # 10 + 10 × (10 + 5 × 10): each list call counted once per parent it may run for.
    assert cost(query, schema=NESTED, field_operations=NESTED_PRICES) == 610
    by_variable = (
        "query Q($n: Int = 4) { people(first: $n) { edges { node { friends { edges { node { id } } } } } } }"
    )
    assert cost(by_variable, schema=NESTED, field_operations=NESTED_PRICES) == 10 + 4 * 10
    assert cost(by_variable, {"n": 2}, schema=NESTED, field_operations=NESTED_PRICES) == 10 + 2 * 10


def test_fragments_are_priced_once_however_often_they_are_spread() -> None:
    # A chain of fragments each spreading the next twice would be 2^40 walks if expanded.
    fragments = [f"fragment F{n} on Query {{ ...F{n + 1} ...F{n + 1} }}" for n in range(40)]
    fragments.append('fragment F40 on Query { profile(id: "a") { id } }')
    query = "{ ...F0 } " + " ".join(fragments)
    assert cost(query) == 1  # one field in the end: execution merges the repeats too
    repeated = '{ p: profile(id: "a") { id } p: profile(id: "a") { handle } q: profile(id: "b") { id } }'
    assert cost(repeated) == 2


def test_page_size_is_checked_before_execution() -> None:
    for first in (0, 101, -1):
        with pytest.raises(LimitExceeded) as refused:
            cost(f"{{ profiles(first: {first}) {{ totalCount }} }}")
        assert refused.value.code == "VALIDATION"
    with pytest.raises(LimitExceeded):
        cost("query Q($n: Int!) { profiles(first: $n) { totalCount } }", {"n": 500})


def test_cost_above_the_maximum_is_refused() -> None:
    aliases = " ".join(f"p{n}: profiles(first: 100) {{ totalCount }}" for n in range(12))
    document, op = operation("{ " + aliases + " }")
    with pytest.raises(LimitExceeded) as refused:
        operation_cost(KEEL, document, op, {}, DEFAULT_COSTS, Limits(10, 15, max_cost=100))  # type: ignore[arg-type]
    assert refused.value.code == "COST_LIMIT_EXCEEDED"
    assert refused.value.extensions["cost"] == {"requested": 120, "maximum": 100}


def test_depth_and_aliases() -> None:
    deep = "{ profiles { edges { node { emails { address } } } } }"
    document, op = operation(deep)
    check_shape(KEEL, document, op, LIMITS)  # type: ignore[arg-type]
    with pytest.raises(LimitExceeded) as refused:
        check_shape(KEEL, document, op, Limits(max_depth=4, max_aliases=15, max_cost=100))  # type: ignore[arg-type]
    assert refused.value.code == "DEPTH_LIMIT_EXCEEDED"
    introspection = "{ __schema { types { fields { type { ofType { ofType { ofType { name } } } } } } } }"
    document, op = operation(introspection)
    check_shape(KEEL, document, op, Limits(max_depth=2, max_aliases=0, max_cost=1))  # type: ignore[arg-type]
    aliased = parse("query { a: viewer { k: keyId } ...F } fragment F on Query { b: viewer { keyId } }")
    assert count_aliases(aliased) == 3


def test_operation_labels_are_bounded() -> None:
    labels = OperationLabels(capacity=2)
    assert [labels.label(n) for n in ("A", "B", "C", "A", None, "bad name", "other")] == [
        "A",
        "B",
        "other",
        "A",
        "anonymous",
        "other",
        "other",
    ]


def test_persisted_queries_are_bounded_least_recently_used_first() -> None:
    store = PersistedQueries(capacity=2)
    for query in ("{ a }", "{ b }"):
        store.put(query_hash(query), query)
    assert store.get(query_hash("{ a }")) == "{ a }"  # now the most recent
    store.put(query_hash("{ c }"), "{ c }")
    assert len(store) == 2
    assert store.get(query_hash("{ b }")) is None
    assert store.get(query_hash("{ a }")) == "{ a }"
    assert (
        query_hash("{ a }") == "a0b8ad3c2f8e0dfc0c0a8aa1e4b89b0cf5e3c4f4bdd2db7d3f1bd2b9ee3b3c1b"
        or len(query_hash("x")) == 64
    )
