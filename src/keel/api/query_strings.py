"""Query strings read one way by every protocol over HTTP: no parameter of Keel's takes several
values, so a repeated one is refused instead of letting the last win. A proxy or a cache that
reads the first of them would otherwise see another request than Keel serves (the same hazard
as duplicated keys in JSON, see keel.service.strict_json)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def repeated_names(items: Iterable[tuple[str, str]]) -> list[str]:
    """The parameter names that occur more than once, sorted."""
    return sorted(name for name, count in Counter(name for name, _ in items).items() if count > 1)


def repeated_detail(names: list[str]) -> str:
    shown = ", ".join(f"`{name[:64]}`" for name in names[:10])
    return f"Send each query parameter once; repeated: {shown}."
