"""Write the sha256 of every file of each pinned release into requirements.lock,
requirements-dev.lock and requirements-openapi-client.lock (the SDK generator's own tool
environment, scripts/ensure-openapi-client.sh), so that `pip install -r` runs in hash-checking
mode: a file that is not
the one locked (a tampered mirror, a re-uploaded build) is refused.

    .venv/bin/python scripts/lock_hashes.py [--local-indexes]

The hashes of a release are every file PyPI holds for it (all platforms, so the lock installs on
any machine). With `--local-indexes`, also every file of it on the `file://` indexes pip is
configured with here (their pages carry each file's sha256): for a machine whose mirror holds
builds of its own, at the price of a lock that accepts files PyPI does not have. Run it after
changing a pin; tests/unit/test_locks.py fails on a lock line without hashes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-dev.lock", "requirements-openapi-client.lock")
PYPI = "https://pypi.org/simple/{name}/"
_PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;\\]+)")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append(href)


def _release_of(filename: str) -> tuple[str, Version] | None:
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        elif filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
        else:
            return None
    except (ValueError, InvalidVersion):
        return None
    return canonicalize_name(name), version


def _local_indexes() -> list[Path]:
    shown = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    indexes = []
    for line in shown.splitlines():
        if "index-url" in line:
            for url in line.split("=", 1)[1].strip("'\" ").split():
                if url.startswith("file://"):
                    indexes.append(Path(url.removeprefix("file://")))
    return indexes


def _local_hashes(name: str, version: Version, indexes: list[Path]) -> set[str]:
    found = set()
    for index in indexes:
        page = index / name / "index.html"
        if not page.exists():
            continue
        links = _Links()
        links.feed(page.read_text())
        for href in links.links:
            path, _, fragment = href.partition("#sha256=")
            if fragment and _release_of(path.rsplit("/", 1)[-1]) == (name, version):
                found.add(fragment)
            elif not fragment and _release_of(path.rsplit("/", 1)[-1]) == (name, version):
                found.add(hashlib.sha256((page.parent / path).read_bytes()).hexdigest())
    return found


def _pypi_hashes(name: str, version: Version) -> set[str]:
    request = urllib.request.Request(  # noqa: S310 - a fixed https URL
        PYPI.format(name=name), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - a fixed https URL
        files = json.load(answer)["files"]
    return {
        file["hashes"]["sha256"]
        for file in files
        if "sha256" in file.get("hashes", {}) and _release_of(file["filename"]) == (name, version)
    }


def lock_with_hashes(lock: Path, indexes: list[Path]) -> None:
    pins = [match.groups() for line in lock.read_text().splitlines() if (match := _PIN.match(line))]
    out = []
    for pinned, version in pins:
        name = canonicalize_name(pinned.split("[", 1)[0])
        hashes = _pypi_hashes(name, Version(version)) | _local_hashes(name, Version(version), indexes)
        if not hashes:
            raise SystemExit(f"{lock.name}: no file found for {pinned}=={version}")
        lines = [f"{pinned}=={version}", *(f"    --hash=sha256:{h}" for h in sorted(hashes))]
        out.append(" \\\n".join(lines))
        print(f"{lock.name}: {pinned}=={version}: {len(hashes)} files", flush=True)
    lock.write_text("\n".join(out) + "\n")


def main() -> None:
    indexes = _local_indexes() if "--local-indexes" in sys.argv[1:] else []
    for name in LOCKS:
        lock_with_hashes(REPO / name, indexes)


if __name__ == "__main__":
    main()
