"""One table of operations: each protocol maps its words to an entry, and the entry alone sets
the price (unless the configuration changes it) and the priority."""

from __future__ import annotations

import pytest
from graphql import OperationDefinitionNode, parse

from keel.admission.operations import (
    DEFAULT_COSTS,
    ERASURES_START,
    OPERATIONS,
    PROFILES_DELETE,
    PROFILES_GET,
    PROFILES_LIST,
)
from keel.api.graphql.admission import operation_of
from keel.api.graphql.limits import FIELD_OPERATIONS
from keel.api.graphql.operations import ROOT_FIELD_OPERATIONS
from keel.api.graphql.schema import build_schema, graphql_core_schema
from keel.bootstrap.protection import build_rate_limit_catalog
from keel.config import Settings


def _graphql_operation(query: str) -> tuple[str, int]:
    document = parse(query)
    definition = document.definitions[0]
    assert isinstance(definition, OperationDefinitionNode)
    chosen, _ = operation_of(document, definition)
    return chosen.name, DEFAULT_COSTS[chosen.name]


def test_a_graphql_root_field_takes_its_price_and_priority_from_one_entry() -> None:
    # A search by handle is a list on REST (`?handle=`): the same entry, price and priority.
    assert _graphql_operation('{ profileByHandle(handle: "x") { id } }') == (PROFILES_LIST.name, 10)
    assert FIELD_OPERATIONS["Query.profileByHandle"] == PROFILES_LIST.name
    assert _graphql_operation('{ profile(id: "x") { id } }') == (PROFILES_GET.name, 1)
    # Mutations too: an erasure is rare admin work, served after what users wait on, as on REST.
    assert _graphql_operation('mutation { eraseProfile(id: "x") { id } }')[0] == ERASURES_START.name
    assert _graphql_operation('mutation { deleteProfile(id: "x") }')[0] == PROFILES_DELETE.name
    # The dearest, most sheddable root sets a document's priority.
    assert (
        _graphql_operation('{ profile(id: "x") { id } profiles { nodes { id } } }')[0] == PROFILES_LIST.name
    )


def test_every_graphql_root_field_is_in_the_table_or_a_single_read() -> None:
    schema = graphql_core_schema(build_schema())
    fields = {
        f"{root.name}.{name}"
        for root in (schema.query_type, schema.mutation_type)
        if root
        for name in root.fields
    }
    unmapped = fields - set(ROOT_FIELD_OPERATIONS)
    assert unmapped == {"Query.viewer"}  # a single read of the caller's own key: profiles.get
    for operation in ROOT_FIELD_OPERATIONS.values():
        assert OPERATIONS[operation.name] is operation


def test_the_configuration_changes_prices_by_operation_name() -> None:
    catalog = build_rate_limit_catalog(Settings(ratelimit_costs={"profiles.get": 3}))
    assert catalog.cost_of("profiles.get") == 3
    assert catalog.cost_of("profiles.list") == PROFILES_LIST.cost
    assert catalog.cost_of("not.an.operation") == DEFAULT_COSTS["other"]


def test_a_price_for_an_operation_that_does_not_exist_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match=r"name no operation: profile\.get"):
        build_rate_limit_catalog(Settings(ratelimit_costs={"profile.get": 3}))
