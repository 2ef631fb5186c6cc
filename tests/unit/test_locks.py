"""The dependencies are bounded and locked: every pin carries the sha256 of its files (pip then
installs in hash-checking mode), the runtime lock agrees with the development lock, and every
dependency declared in pyproject.toml has bounds that its pinned version meets (CONTRIBUTING.md,
scripts/lock_hashes.py)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
_ENTRY = re.compile(
    r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+?)((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})*)\s*$", re.M
)


def pins(lock: str) -> dict[str, tuple[Version, int]]:
    """Name -> (pinned version, how many hashes), from a lock written by scripts/lock_hashes.py."""
    text = (REPO / lock).read_text()
    found: dict[str, tuple[Version, int]] = {
        canonicalize_name(m.group(1)): (Version(m.group(2)), m.group(3).count("--hash="))
        for m in _ENTRY.finditer(text)
    }
    lines = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert len(found) == len(lines), f"{lock}: lines that are not a pin with hashes"
    return found


def test_every_pin_carries_the_hashes_of_its_files() -> None:
    for lock in ("requirements.lock", "requirements-dev.lock", "requirements-openapi-client.lock"):
        unhashed = [name for name, (_, hashes) in pins(lock).items() if hashes == 0]
        assert pins(lock), lock
        assert not unhashed, f"{lock}: run scripts/lock_hashes.py for {unhashed}"


def test_the_runtime_lock_is_the_development_locks_subset() -> None:
    runtime, development = pins("requirements.lock"), pins("requirements-dev.lock")
    for name, (version, _) in runtime.items():
        assert development.get(name, (None,))[0] == version, name


def test_every_declared_dependency_is_bounded_and_its_pin_within_the_bounds() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = pins("requirements-dev.lock")
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    assert declared
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators, f"{line}: no lower bound"
        version, _ = locked[name]
        if version.major == 0:
            assert "<" in operators, f"{line}: a 0.x library needs an upper bound"
        assert requirement.specifier.contains(version), f"{line}: the pinned {version} is outside"
