"""The exported SDL is the reviewed contract of the GraphQL API."""

from __future__ import annotations

from pathlib import Path

from graphql import build_schema, find_breaking_changes

from keel.api.graphql import schema_sdl

SDL = Path(__file__).resolve().parents[2] / "contracts" / "graphql" / "keel.graphql"


def test_exported_sdl_matches_the_schema() -> None:
    exported, current = SDL.read_text(encoding="utf-8"), schema_sdl()
    breaking = [
        f"{change.type.name}: {change.description}"
        for change in find_breaking_changes(build_schema(exported), build_schema(current))
    ]
    assert exported == current, (
        "The GraphQL schema changed: run `python -m keel.api.graphql.export_sdl` (make graphql-schema)"
        " and commit contracts/graphql/keel.graphql with the change, so that it is reviewed. Breaking changes"
        f" (deprecate with `deprecation_reason` instead of removing): {breaking or 'none'}"
    )


def test_the_schema_has_what_clients_rely_on() -> None:
    sdl = schema_sdl()
    for line in (
        "profile(id: ID!): Profile",
        "profileByHandle(handle: String!): Profile",
        "viewer: Viewer!",
        "createProfile(input: CreateProfileInput!): CreateProfilePayload!",
        "updateProfile(id: ID!, patch: ProfilePatch!, expectedVersion: Int = null): Profile!",
        "deleteProfile(id: ID!, expectedVersion: Int = null): DeleteProfilePayload!",
        "totalCount: Int",
        "pageInfo: PageInfo!",
        "edges: [ProfileEdge!]!",
    ):
        assert line in sdl
