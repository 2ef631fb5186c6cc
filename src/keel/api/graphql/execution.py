"""Execution on graphql-core, with a fast path for plain subtrees.

graphql-core resolves every field through the full machinery (resolve info, resolver call,
awaitable check, completion by type): about 4 µs a field, so 100 profiles with their emails and
links (some 1,900 fields) took 9 ms of CPU where REST's JSON took 1. Most of the schema is
*plain*: object types whose fields are attributes of the value already in hand (no resolver, no
arguments), like `Profile`, `Email`, `Link`, the edges and page info. Below such a type there is
nothing to call and nothing to wait for, so `PlainSubtreeExecutor` builds the answer for its
selection directly from the attributes. Selections (fragments, aliases, @skip/@include) are
still collected by graphql-core; anything unexpected (a null in a non-null field, a value of the
wrong kind, @defer) falls back to the standard path, which then reports it as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    GraphQLBoolean,
    GraphQLID,
    GraphQLInt,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    get_named_type,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
)
from graphql.pyutils import Path

from .graphql_core_internals import DeferUsage, FieldDetailsList, GroupedFieldSet
from .strawberry_internals import FIELD_DEFINITION, ExecutionContext, StrawberryField

# Scalars whose serialization returns a value of exactly these Python types unchanged.
_IDENTITY_SCALARS: dict[object, tuple[type, ...]] = {
    GraphQLString: (str,),
    GraphQLID: (str,),
    GraphQLBoolean: (bool,),
    GraphQLInt: (int,),
}


class _Fallback(Exception):
    """This value needs the standard path (it will report the error, if any)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    attribute: str | None  # None: __typename
    non_null: bool
    is_list: bool
    item_non_null: bool
    serialize: Callable[[Any], Any] | None  # leaves
    identity_types: tuple[type, ...]
    child: tuple[GraphQLObjectType, GroupedFieldSet] | None  # objects


def plain_types(schema: GraphQLSchema) -> frozenset[str]:
    """Object types whose every field is an attribute with no arguments and no resolver, of a
    leaf type or of another plain type (a list of either included)."""
    candidates: dict[str, GraphQLObjectType] = {}
    for name, named in schema.type_map.items():
        if name.startswith("__") or not is_object_type(named):
            continue
        assert isinstance(named, GraphQLObjectType)
        if all(
            _is_attribute(field.extensions.get(FIELD_DEFINITION)) and not field.args
            for field in named.fields.values()
        ):
            candidates[name] = named
    changed = True
    while changed:  # drop types reaching a non-plain object type, until nothing changes
        changed = False
        for name, object_type in list(candidates.items()):
            for field in object_type.fields.values():
                target = get_named_type(field.type)
                if not is_leaf_type(target) and target.name not in candidates:
                    del candidates[name]
                    changed = True
                    break
    return frozenset(candidates)


def _is_attribute(definition: object) -> bool:
    return (
        isinstance(definition, StrawberryField)
        and definition.base_resolver is None
        and not definition.extensions
        and not definition.arguments
    )


class PlainSubtreeExecutor(ExecutionContext):
    plain: frozenset[str] = frozenset()  # set on the subclass made by `executor_for`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Plans by the identity of graphql-core's collected field sets (memoized per execution);
        # the field set is kept alive with its plan so that its id is not reused.
        self._plans: dict[int, tuple[GroupedFieldSet, list[_Entry]]] = {}

    # Overrides graphql-core's (see graphql_core_internals.EXECUTE_SUBFIELDS).
    def execute_collected_subfields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path,
        grouped_field_set: GroupedFieldSet,
        new_defer_usages: Sequence[DeferUsage],
        position_context: Any,
    ) -> Any:
        if parent_type.name in self.plain and not new_defer_usages:
            try:
                return self._build(parent_type, source_value, grouped_field_set)
            except _Fallback:
                pass
        return super().execute_collected_subfields(
            parent_type, source_value, path, grouped_field_set, new_defer_usages, position_context
        )

    def _build(self, parent_type: GraphQLObjectType, source: Any, fields: GroupedFieldSet) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for entry in self._plan(parent_type, fields):
            if entry.attribute is None:
                result[entry.key] = parent_type.name
                continue
            value = getattr(source, entry.attribute)
            if value is None:
                if entry.non_null:
                    raise _Fallback
                result[entry.key] = None
            elif entry.is_list:
                if not isinstance(value, list | tuple):
                    raise _Fallback
                result[entry.key] = [self._one(entry, item, entry.item_non_null) for item in value]
            else:
                result[entry.key] = self._one(entry, value, entry.non_null)
        return result

    def _one(self, entry: _Entry, value: Any, non_null: bool) -> Any:
        if value is None:
            if non_null:
                raise _Fallback
            return None
        if entry.child is not None:
            child_type, child_fields = entry.child
            return self._build(child_type, value, child_fields)
        if type(value) in entry.identity_types:
            return value
        assert entry.serialize is not None
        return entry.serialize(value)

    def _plan(self, parent_type: GraphQLObjectType, fields: GroupedFieldSet) -> list[_Entry]:
        known = self._plans.get(id(fields))
        if known is not None:
            return known[1]
        entries = [self._entry(parent_type, key, details) for key, details in fields.items()]
        self._plans[id(fields)] = (fields, entries)
        return entries

    def _entry(self, parent_type: GraphQLObjectType, key: str, details: FieldDetailsList) -> _Entry:
        name = details[0].node.name.value
        if name == "__typename":
            return _Entry(key, None, True, False, False, None, (), None)
        field = parent_type.fields[name]
        definition = field.extensions[FIELD_DEFINITION]
        output = field.type
        non_null = is_non_null_type(output)
        inner = output.of_type if non_null else output
        is_list = is_list_type(inner)
        item = inner.of_type if is_list else inner
        item_non_null = is_non_null_type(item)
        named = get_named_type(output)
        child = None
        serialize = None
        if isinstance(named, GraphQLObjectType):
            collected = self.collect_subfields(named, details)
            if collected.new_defer_usages:
                raise _Fallback
            child = (named, collected.grouped_field_set)
        else:
            serialize = named.serialize
        return _Entry(
            key,
            definition.python_name,
            non_null,
            is_list,
            item_non_null,
            serialize,
            _IDENTITY_SCALARS.get(named, ()),
            child,
        )


def executor_for(schema: GraphQLSchema) -> type[PlainSubtreeExecutor]:
    """The executor class for `schema`, knowing which of its types are plain."""
    return type("KeelExecutor", (PlainSubtreeExecutor,), {"plain": plain_types(schema)})
