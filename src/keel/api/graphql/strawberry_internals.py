"""Every place Keel reaches into Strawberry's internals, and why; nothing else in Keel does.

Strawberry is used to declare the schema (types and resolvers in Python); Keel parses,
validates, prices and executes on the graphql-core schema Strawberry builds, so that depth,
alias and cost limits and persisted queries work on one parsed document. That needs:

- `core_schema`: the graphql-core schema inside a `strawberry.Schema` (no public accessor in
  0.341; Strawberry's own execution and printer read the same private attribute).
- `ExecutionContext`: Strawberry's subclass of graphql-core's, which `PlainSubtreeExecutor`
  extends (keel.api.graphql.execution) so that Strawberry's own field semantics stay.
- `StrawberryField` and `FIELD_DEFINITION`: where Strawberry keeps a field's definition, read to
  tell plain attribute fields (served without a resolver call) from the others.
- `IS_AWAITABLE`: Strawberry's faster awaitable check, handed to graphql-core's `execute`.

Strawberry is pinned (requirements.lock); `tests/unit/test_framework_contracts.py` fails loudly
when an upgrade moves any of these. Decision record: docs/decisions/0001-framework-internals.md.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLSchema
from strawberry import Schema
from strawberry.execution import optimized_is_awaitable
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext as ExecutionContext
from strawberry.types.field import StrawberryField

__all__ = ["FIELD_DEFINITION", "IS_AWAITABLE", "ExecutionContext", "StrawberryField", "core_schema"]

FIELD_DEFINITION = "strawberry-definition"  # the graphql-core field extension holding it
# Annotated as returning bool, where graphql-core wants a TypeGuard: typed loosely on purpose.
IS_AWAITABLE: Any = optimized_is_awaitable


def core_schema(schema: Schema) -> GraphQLSchema:
    """The graphql-core schema Strawberry built. Fails at start-up, not per request, if an
    upgrade moves it."""
    core = getattr(schema, "_schema", None)
    if not isinstance(core, GraphQLSchema):
        raise TypeError("strawberry.Schema no longer keeps its graphql-core schema in `_schema`")
    return core
