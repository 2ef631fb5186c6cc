"""What an operation may ask for, decided before any resolver runs: depth, aliases, page sizes
and cost.

Cost is computed the way GitHub does it: every field that calls a use case is priced like the
REST operation calling the same use case, and multiplied by the sizes of the connections it is
nested in (the `first` each would return at most). Introspection is not counted for depth (its
shape is fixed by the schema, and graphql-core's MaxIntrospectionDepthRule bounds its fan-out),
but it is priced: a whole schema is a document as large as a page of profiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)

from keel.service.use_cases import MAX_PAGE_SIZE

from .operations import ROOT_FIELD_OPERATIONS

# Schema field -> the name of the operation (the price list's key) its resolver performs.
FIELD_OPERATIONS: dict[str, str] = {field: op.name for field, op in ROOT_FIELD_OPERATIONS.items()}
PAGE_ARGUMENT = "first"
DEFAULT_PAGE_SIZE = 20


class LimitExceeded(Exception):
    """The operation is refused before execution; `code` goes to `extensions.code`."""

    def __init__(self, code: str, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extensions = extensions


@dataclass(frozen=True, slots=True)
class Price:
    """Units an operation may spend at most, and the part of them spent whatever its resolvers
    do (introspection: no use case is called to count it as spent)."""

    requested: int
    fixed: int


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int
    max_aliases: int
    max_cost: int


def count_aliases(document: DocumentNode) -> int:
    """Aliased fields written in the document (each occurrence once)."""
    count = 0
    pending: list[SelectionSetNode] = [
        d.selection_set
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode | FragmentDefinitionNode)
    ]
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FieldNode) and selection.alias is not None:
                count += 1
            selection_set = getattr(selection, "selection_set", None)
            if selection_set is not None:
                pending.append(selection_set)
    return count


# graphql-core's OverlappingFieldsCanBeMergedRule compares every two fields that merge into one
# response field: quadratic, and multiplied through nesting. Within 2,000 tokens, 480 `viewer
# { keyId }` in one query took it 1.2 s of CPU on the event loop, and 7 `profiles` each with 7
# `edges` each with 7 `node` 0.6 s. Both bounds below are far above what clients write.
MAX_MERGED_FIELDS = 20  # field nodes merging into one response field
MAX_EXPANDED_FIELDS = 5000  # field nodes in the document with its fragments expanded


def check_merged_fields(document: DocumentNode) -> None:
    """Refuses, before validation, a document whose fields merge too many at a time or that
    expands to too many. Linear in the expanded document, which is itself bounded."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    # Each entry: selection sets that merge, and the fragments already expanded in the groups
    # above them, which are not expanded again: a cycle is left for validation to report, and no
    # type of Keel's schema contains itself, so a valid document never spreads one fragment both
    # in a group and below it.
    pending: list[tuple[list[SelectionSetNode], frozenset[str]]] = [
        ([d.selection_set], frozenset({d.name.value} if isinstance(d, FragmentDefinitionNode) else ()))
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode | FragmentDefinitionNode)
    ]
    expanded = 0
    while pending:
        sets, above = pending.pop()
        merged: dict[str, list[FieldNode]] = {}
        spread = set(above)
        while sets:
            for selection in sets.pop().selections:
                if isinstance(selection, FieldNode):
                    merged.setdefault((selection.alias or selection.name).value, []).append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    sets.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in spread:
                    spread.add(selection.name.value)
                    fragment = fragments.get(selection.name.value)
                    if fragment is not None:
                        sets.append(fragment.selection_set)
        for key, nodes in merged.items():
            expanded += len(nodes)
            if len(nodes) > MAX_MERGED_FIELDS or expanded > MAX_EXPANDED_FIELDS:
                message = (
                    f"{len(nodes)} fields merge into `{key}`; at most {MAX_MERGED_FIELDS} may."
                    if len(nodes) > MAX_MERGED_FIELDS
                    else f"The document expands to more than {MAX_EXPANDED_FIELDS} fields."
                )
                raise LimitExceeded(
                    "FIELD_LIMIT_EXCEEDED",
                    message,
                    maxMergedFields=MAX_MERGED_FIELDS,
                    maxExpandedFields=MAX_EXPANDED_FIELDS,
                )
            below = [node.selection_set for node in nodes if node.selection_set is not None]
            if below:
                pending.append((below, frozenset(spread)))


@dataclass
class _Walk:
    schema: GraphQLSchema
    fragments: Mapping[str, FragmentDefinitionNode]
    variables: Mapping[str, Any]
    defaults: Mapping[str, Any]
    prices: Mapping[str, int]
    field_operations: Mapping[str, str]
    depth_of_fragment: dict[str, int] = field(default_factory=dict)
    cost_of_fragment: dict[str, int] = field(default_factory=dict)
    fixed: int = 0

    def depth(self, selection_set: SelectionSetNode) -> int:
        deepest = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                if selection.name.value.startswith("__"):
                    continue
                below = self.depth(selection.selection_set) if selection.selection_set else 0
                deepest = max(deepest, 1 + below)
            elif isinstance(selection, InlineFragmentNode):
                deepest = max(deepest, self.depth(selection.selection_set))
            elif isinstance(selection, FragmentSpreadNode):
                deepest = max(deepest, self._fragment_depth(selection.name.value))
        return deepest

    def _fragment_depth(self, name: str) -> int:
        # Memoized: a fragment spread many times (or spreading others many times) is walked once,
        # so a small document cannot make this walk exponential.
        known = self.depth_of_fragment.get(name)
        if known is None:
            fragment = self.fragments.get(name)
            known = self.depth(fragment.selection_set) if fragment is not None else 0
            self.depth_of_fragment[name] = known
        return known

    def cost(self, selection_set: SelectionSetNode, parent: GraphQLObjectType) -> int:
        """Units for one execution of `selection_set` on `parent`: an upper bound that never
        undercounts. As in execution, a fragment spread twice in one selection set runs once
        and fields of one response key run once (their sub-selections are merged, so those are
        summed); a fragment's cost is computed once and reused, which keeps this walk linear."""
        total = 0
        fragments_seen: set[str] = set()
        keys_seen: set[str] = set()
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                key = (selection.alias or selection.name).value
                total += self._field_cost(selection, parent, count_own=key not in keys_seen)
                keys_seen.add(key)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition is not None else parent
                if isinstance(target, GraphQLObjectType):
                    total += self.cost(selection.selection_set, target)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in fragments_seen:
                fragments_seen.add(selection.name.value)
                total += self._fragment_cost(selection.name.value)
        return total

    def _fragment_cost(self, name: str) -> int:
        known = self.cost_of_fragment.get(name)
        if known is None:
            self.cost_of_fragment[name] = 0  # validated documents have no cycles; belt and braces
            fragment = self.fragments.get(name)
            known = 0
            if fragment is not None:
                target = self.schema.get_type(fragment.type_condition.name.value)
                if isinstance(target, GraphQLObjectType):
                    known = self.cost(fragment.selection_set, target)
            self.cost_of_fragment[name] = known
        return known

    def _field_cost(self, node: FieldNode, parent: GraphQLObjectType, *, count_own: bool) -> int:
        name = node.name.value
        operation = self.field_operations.get(f"{parent.name}.{name}")
        own = 0
        if operation is not None and count_own:
            own = self.prices.get(operation) or self.prices["other"]
        if name.startswith("__"):
            self.fixed += own  # meta fields: not in `parent.fields`, no connection below
            return own
        definition = parent.fields.get(name)
        if definition is None:
            return 0
        multiplier = 1
        if PAGE_ARGUMENT in definition.args:
            multiplier = self._page_size(node)
        child = get_named_type(definition.type)
        below = 0
        if node.selection_set is not None and isinstance(child, GraphQLObjectType):
            below = self.cost(node.selection_set, child)
        return own + multiplier * below

    def _page_size(self, node: FieldNode) -> int:
        value: Any = DEFAULT_PAGE_SIZE
        for argument in node.arguments or ():
            if argument.name.value != PAGE_ARGUMENT:
                continue
            if isinstance(argument.value, IntValueNode):
                value = int(argument.value.value)
            elif isinstance(argument.value, VariableNode):
                variable = argument.value.name.value
                value = self.variables.get(variable, self.defaults.get(variable, DEFAULT_PAGE_SIZE))
        if not isinstance(value, int) or isinstance(value, bool):
            return MAX_PAGE_SIZE  # not a number: execution refuses it; price the worst case
        if not 1 <= value <= MAX_PAGE_SIZE:
            raise LimitExceeded(
                "VALIDATION",
                f"`{PAGE_ARGUMENT}` must be between 1 and {MAX_PAGE_SIZE}.",
                fieldErrors=[{"field": f"/{PAGE_ARGUMENT}", "message": f"between 1 and {MAX_PAGE_SIZE}"}],
            )
        return value


def _variable_defaults(operation: OperationDefinitionNode) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for definition in operation.variable_definitions or ():
        if isinstance(definition.default_value, IntValueNode):
            defaults[definition.variable.name.value] = int(definition.default_value.value)
    return defaults


def operation_depth(schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode) -> int:
    return _fresh_walk(schema, document, operation, {}, {"other": 1}).depth(operation.selection_set)


def check_shape(
    schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode, limits: Limits
) -> None:
    """Depth and aliases: properties of the document alone (the caller may cache a pass)."""
    depth = operation_depth(schema, document, operation)
    if depth > limits.max_depth:
        raise LimitExceeded(
            "DEPTH_LIMIT_EXCEEDED",
            f"The operation is nested {depth} fields deep; at most {limits.max_depth} are allowed.",
            depth=depth,
            maxDepth=limits.max_depth,
        )
    aliases = count_aliases(document)
    if aliases > limits.max_aliases:
        raise LimitExceeded(
            "ALIAS_LIMIT_EXCEEDED",
            f"The document has {aliases} aliases; at most {limits.max_aliases} are allowed.",
            aliases=aliases,
            maxAliases=limits.max_aliases,
        )


def operation_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: Mapping[str, Any],
    prices: Mapping[str, int],
    limits: Limits,
    field_operations: Mapping[str, str] = FIELD_OPERATIONS,
) -> Price:
    """The units the operation may spend at most (at least 1). Raises `LimitExceeded` for a page
    size out of range or a cost above the per-operation maximum."""
    walk = _fresh_walk(schema, document, operation, variables, prices, field_operations)
    root = schema.get_root_type(operation.operation)
    cost = walk.cost(operation.selection_set, root) if root is not None else 0
    cost = max(1, cost)
    if cost > limits.max_cost:
        raise LimitExceeded(
            "COST_LIMIT_EXCEEDED",
            f"The operation may cost {cost} units; at most {limits.max_cost} are allowed per operation.",
            cost={"requested": cost, "maximum": limits.max_cost},
        )
    return Price(cost, walk.fixed)


def _fresh_walk(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: Mapping[str, Any],
    prices: Mapping[str, int],
    field_operations: Mapping[str, str] = FIELD_OPERATIONS,
) -> _Walk:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    return _Walk(
        schema=schema,
        fragments=fragments,
        variables=variables,
        defaults=_variable_defaults(operation),
        prices=prices,
        field_operations=field_operations,
    )
