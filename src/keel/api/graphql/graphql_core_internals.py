"""Every place Keel reaches into graphql-core's internals, and why; nothing else in Keel does.

- `GroupedFieldSet`, `FieldDetailsList`, `DeferUsage` (graphql.execution.collect_fields) and
  `EXECUTE_SUBFIELDS`: the types and the name of the `ExecutionContext` method that
  `PlainSubtreeExecutor` (keel.api.graphql.execution) overrides to build plain subtrees
  straight from attributes, some 4 µs a field less than the full resolver machinery.
- `TOKEN_LIMIT_MESSAGE`: the words of graphql-core's parser when a document has more tokens
  than `max_tokens`; it raises a plain syntax error, and Keel answers that one with its own
  code (`TOKEN_LIMIT_EXCEEDED`).

graphql-core is pinned (requirements.lock); `tests/unit/test_framework_contracts.py` fails
loudly when an upgrade moves any of these. Decision record:
docs/decisions/0001-framework-internals.md.
"""

from __future__ import annotations

from graphql.execution.collect_fields import DeferUsage, FieldDetailsList, GroupedFieldSet

__all__ = ["EXECUTE_SUBFIELDS", "TOKEN_LIMIT_MESSAGE", "DeferUsage", "FieldDetailsList", "GroupedFieldSet"]

EXECUTE_SUBFIELDS = "execute_collected_subfields"
TOKEN_LIMIT_MESSAGE = "tokens. Parsing aborted"  # noqa: S105 - a parser message, not a secret
