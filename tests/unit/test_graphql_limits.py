"""Limits and cost decided on the document alone, before execution."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from graphql import (
    DocumentNode,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    get_introspection_query,
    get_operation_ast,
    parse,
)

from keel.admission.operations import DEFAULT_COSTS
from keel.api.graphql.limits import (
    FIELD_OPERATIONS,
    LimitExceeded,
    Limits,
    check_merged_fields,
    check_shape,
    count_aliases,
    operation_cost,
)
from keel.api.graphql.observability import OperationLabels
from keel.api.graphql.persisted import PersistedQueries, query_hash
from keel.api.graphql.schema import build_schema as build_keel_schema
from keel.api.graphql.schema import graphql_core_schema
from keel.support.lru import BoundedLRU

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


def operation(query: str) -> tuple[DocumentNode, OperationDefinitionNode]:
    document = parse(query)
    found = get_operation_ast(document)
    assert found is not None
    return document, found


def cost(
    query: str,
    variables: dict[str, object] | None = None,
    schema: GraphQLSchema = KEEL,
    field_operations: Mapping[str, str] = FIELD_OPERATIONS,
) -> int:
    document, op = operation(query)
    price = operation_cost(schema, document, op, variables or {}, DEFAULT_COSTS, LIMITS, field_operations)
    return price.requested


def test_costs_are_priced_like_rest() -> None:
    assert cost("{ viewer { keyId } }") == 1  # nothing to fetch: the minimum
    assert cost('{ profile(id: "a") { id } }') == DEFAULT_COSTS["profiles.get"]
    assert cost('{ a: profile(id: "a") { id } b: profile(id: "b") { id } }') == 2
    assert cost("{ profiles(first: 100) { edges { node { emails { address } links { url } } } } }") == 10
    assert cost('{ profileByHandle(handle: "x") { id } }') == DEFAULT_COSTS["profiles.list"]
    mutation = 'mutation { createProfile(input: {handle: "h", emails: []}) { replayed } }'
    assert cost(mutation) == DEFAULT_COSTS["profiles.create"]


def test_introspection_is_priced_and_not_refundable() -> None:
    whole = "{ __schema { types { name } } }"
    assert cost(whole) == DEFAULT_COSTS["profiles.list"]
    aliased = "{ " + " ".join(f"s{n}: __schema {{ types {{ name }} }}" for n in range(15)) + " }"
    assert cost(aliased) == 15 * DEFAULT_COSTS["profiles.list"]
    document, op = operation('{ __type(name: "Query") { name } __typename profile(id: "a") { id } }')
    price = operation_cost(KEEL, document, op, {}, DEFAULT_COSTS, LIMITS)
    # Only the introspection is spent whatever happens; the lookup may be batched or refunded.
    assert (price.requested, price.fixed) == (2, 1)


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
        operation_cost(KEEL, document, op, {}, DEFAULT_COSTS, Limits(10, 15, max_cost=100))
    assert refused.value.code == "COST_LIMIT_EXCEEDED"
    assert refused.value.extensions["cost"] == {"requested": 120, "maximum": 100}


def test_depth_and_aliases() -> None:
    deep = "{ profiles { edges { node { emails { address } } } } }"
    document, op = operation(deep)
    check_shape(KEEL, document, op, LIMITS)
    with pytest.raises(LimitExceeded) as refused:
        check_shape(KEEL, document, op, Limits(max_depth=4, max_aliases=15, max_cost=100))
    assert refused.value.code == "DEPTH_LIMIT_EXCEEDED"
    introspection = "{ __schema { types { fields { type { ofType { ofType { ofType { name } } } } } } } }"
    document, op = operation(introspection)
    check_shape(KEEL, document, op, Limits(max_depth=2, max_aliases=0, max_cost=1))
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


def test_persisted_query_hashes_are_apollos() -> None:
    # The lowercase hex sha256 of the query's UTF-8 text, as Apollo's clients compute it.
    assert query_hash("{ a }") == "1c7e1e347f726166b5b1c55afd61f278cc9b45e00c108ec33d540a566379811b"
    assert query_hash("{ é }") != query_hash("{ e }")


def nested(repeats: int) -> str:
    """`profiles`, each with `edges`, each with `node`: `repeats` of each, merging."""
    inner = "id"
    for name in ("node", "edges", "profiles"):
        inner = " ".join([f"{name} {{ {inner} }}"] * repeats)
    return "{ " + inner + " }"


@pytest.mark.parametrize(
    "query",
    [
        "{ " + " ".join(["viewer { keyId }"] * 480) + " }",  # 1.2 s of validation, unchecked
        nested(7),  # 49 `edges` merge under one `profiles`: 0.6 s
        "{ " + " ".join(["... { viewer { keyId } }"] * 21) + " }",
        "{ "
        + " ".join(f"...F{n}" for n in range(21))
        + " } "
        + " ".join(f"fragment F{n} on Query {{ profiles {{ totalCount }} }}" for n in range(21)),
        # Each fragment spreads the next under two fields: 2^30 fields once expanded.
        "{ ...F0 } "
        + " ".join(f"fragment F{n} on Query {{ a {{ ...F{n + 1} }} b {{ ...F{n + 1} }} }}" for n in range(30))
        + " fragment F30 on Query { x }",
    ],
    ids=["repeated", "nested", "inline-fragments", "fragments", "exponential"],
)
def test_documents_that_would_make_validation_quadratic_are_refused_first(query: str) -> None:
    with pytest.raises(LimitExceeded) as refused:
        check_merged_fields(parse(query))
    assert refused.value.code == "FIELD_LIMIT_EXCEEDED"


def test_what_clients_write_passes_the_merge_limits() -> None:
    for query in (
        get_introspection_query(descriptions=True),
        nested(2),
        "{ " + " ".join(["viewer { keyId }"] * 20) + " }",
        "{ ...A } fragment A on Query { viewer { ...B } } fragment B on Viewer { ...A }",  # for validation
        "{ ...F ...F ...F } fragment F on Query { viewer { keyId } }",
    ):
        check_merged_fields(parse(query))


def test_caches_are_bounded_by_what_they_hold_not_only_by_entries() -> None:
    # Parsed documents of big queries take about 1 MB each: 256 of them would be 256 MB.
    cache: BoundedLRU[str, str] = BoundedLRU(256, 64 * 1024, lambda query, _: len(query))
    for n in range(256):
        query = f"{{ viewer {{ keyId }} }} # {n:04d}" + " " * 16_000
        cache.put(query, "parsed")
    assert cache.size <= 64 * 1024
    assert len(cache) == 4
    cache.put("x" * 70_000, "too big alone")
    assert cache.get("x" * 70_000) is None
    small: BoundedLRU[str, str] = BoundedLRU(2, 1_000, lambda query, _: len(query))
    for query in ("a", "b", "a", "c"):
        small.put(query, query.upper())
    assert [small.get(q) for q in ("a", "b", "c")] == ["A", None, "C"]
