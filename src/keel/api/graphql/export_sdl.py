"""Write the schema's SDL to `contracts/graphql/keel.graphql`: `python -m keel.api.graphql.export_sdl [path]`.

The file is the reviewed contract: a test fails when the schema changes and the file was not
regenerated (tests/unit/test_graphql_schema.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from keel.api.graphql.schema import schema_sdl

DEFAULT_PATH = Path("contracts/graphql/keel.graphql")


def export(path: Path = DEFAULT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema_sdl(), encoding="utf-8")
    return path


if __name__ == "__main__":
    written = export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH)
    print(f"wrote {written}")
