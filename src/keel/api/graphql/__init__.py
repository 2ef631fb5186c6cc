"""GraphQL over the same use cases as REST (Strawberry schema, graphql-core execution), mounted at
`/graphql` by `install_graphql`. Public surface: `install_graphql`, `build_schema`, `schema_sdl`."""

from keel.api.graphql.http import install_graphql
from keel.api.graphql.schema import build_schema, schema_sdl

__all__ = ["build_schema", "install_graphql", "schema_sdl"]
