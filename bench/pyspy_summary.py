"""Summarise a py-spy `--format raw` (collapsed stacks) file: top self and cumulative time by
function and by package. Percentages are of all (non-idle) samples in the file.

    python bench/pyspy_summary.py bench/results/keel-pyspy.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    match = _STDLIB.search(path)
    return "stdlib/" + path[match.end():] if match else path


def _package(short: str) -> str:
    if short.startswith("stdlib/"):
        return "stdlib:" + short.split("/")[1].removesuffix(".py")
    parts = short.removesuffix(".py").split("/")
    if parts[0] == "keel":
        return ".".join(parts[:4])  # keel.api.rest.middleware, keel.observability.x, ...
    return parts[0]


def _parse_frame(frame: str) -> tuple[str, str]:
    """(function key without line number, package)."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), frame.strip()
    short = _short(match.group("file"))
    return f"{match.group('func')} ({short})", _package(short)


def summarise(path: Path, top: int = 15) -> str:
    self_fn: Counter[str] = Counter()
    cum_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    cum_pkg: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _parse_frame(f) for f in stack.split(";")
            if f and not f.startswith(("process ", "thread ("))
        ]
        if not frames:
            continue
        total += count
        fn, pkg = frames[-1]
        self_fn[fn] += count
        self_pkg[pkg] += count
        for key in {f for f, _ in frames}:
            cum_fn[key] += count
        for key in {p for _, p in frames}:
            cum_pkg[key] += count
    if total == 0:
        return f"{path}: no samples"

    def table(title: str, counter: Counter[str], n: int) -> list[str]:
        rows = [f"{title}"]
        rows += [f"  {100 * c / total:5.1f}%  {key}" for key, c in counter.most_common(n)]
        return rows

    out = [f"py-spy samples: {total} (non-idle) from {path}"]
    out += table(f"top {top} self time by function:", self_fn, top)
    out += table(f"top {top} self time by package:", self_pkg, top)
    out += table(f"top {2 * top} cumulative time by function:", cum_fn, 2 * top)
    out += table(f"top {top} cumulative time by package:", cum_pkg, top)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summarise(args.file, args.top))


if __name__ == "__main__":
    main()
