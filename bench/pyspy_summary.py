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
# Leaf frames that mean "a thread blocked waiting", which py-spy does not always flag as idle.
_WAITING = re.compile(
    r"^(Condition\.wait|Event\.wait|Queue\.get|BaseSelector\.select) \(\S*(threading|queue|selectors)\.py"
)

# Request-path areas: (label, first frame that starts the area, deeper frame that ends it). A sample
# counts for an area if its stack has a frame matching `start` with no frame matching `stop` below.
_AREAS: list[tuple[str, str, str | None]] = [
    (
        "outside the ASGI app: event loop, uvicorn parsing/IO, detached tasks",
        r"",
        r"^RequestResponseCycle\.run_asgi ",
    ),
    (
        "ASGI stack above RequestEnvelope (Cadwyn/FastAPI/Starlette wrappers)",
        r"^RequestResponseCycle\.run_asgi ",
        r"^RequestEnvelope\.__call__ \(",
    ),
    (
        "RequestEnvelope own work (span, metrics, log, ids)",
        r"^RequestEnvelope\.__call__ \(",
        r"^KeelVersionPicker\.__call__ \(",
    ),
    (
        "KeelVersionPicker own work (auth cache lookup, header)",
        r"^KeelVersionPicker\.__call__ \(",
        r"^ExceptionMiddleware\.__call__ ",
    ),
    (
        "routing + exception middleware down to the FastAPI handler",
        r"^ExceptionMiddleware\.__call__ ",
        r"^get_request_handler\.<locals>\.app ",
    ),
    (
        "FastAPI handler own work (Response, background, exit stacks)",
        r"^get_request_handler\.<locals>\.app ",
        r"^(solve_dependencies|run_endpoint_function|serialize_response|JSONResponse\.__init__) ",
    ),
    ("FastAPI solve_dependencies (all solves)", r"^solve_dependencies ", None),
    ("  of which Cadwyn's second solve (_migrate_request)", r"^_migrate_request ", None),
    (
        "Cadwyn versioned wrapper, excl. endpoint and its solve",
        r"^VersionBundle\._versioned\.",
        r"^(get_profile \(keel|solve_dependencies )",
    ),
    ("endpoint: keel get_profile (routes -> service -> store)", r"^get_profile \(keel/api", None),
    ("  of which asyncpg (fetchrow, pool acquire)", r"^get_profile \(keel/api", r"^asyncpg$"),
    ("serialize_response (pydantic validate + dump of response_model)", r"^serialize_response ", None),
    ("JSONResponse render (json.dumps)", r"^JSONResponse\.__init__ ", None),
    ("asyncpg, anywhere (incl. pool release/reset tasks)", r"^asyncpg$", None),
    ("structlog, anywhere", r"^structlog$", None),
    ("opentelemetry, anywhere", r"^opentelemetry$", None),
    ("prometheus_client, anywhere", r"^prometheus_client$", None),
    ("anyio/threadpool, anywhere", r"^(anyio|stdlib:threading|stdlib:queue)$", None),
]


def _area_hit(frames: list[tuple[str, str]], start: re.Pattern[str], stop: re.Pattern[str] | None) -> bool:
    """Frames are (function key, package); package-level patterns match the package."""

    def hit(pattern: re.Pattern[str], frame: tuple[str, str]) -> bool:
        return bool(pattern.search(frame[0]) or pattern.fullmatch(frame[1]))

    for index, frame in enumerate(frames):
        if hit(start, frame):
            if stop is None:
                return True
            if "$" in stop.pattern:  # a package pattern: only deeper frames of that package end it
                return not any(stop.fullmatch(pkg) for _, pkg in frames[index + 1 :])
            return not any(stop.search(fn) for fn, _ in frames[index + 1 :])
    return False


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    match = _STDLIB.search(path)
    return "stdlib/" + path[match.end() :] if match else path


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
    area_counts: Counter[str] = Counter()
    areas = [(label, re.compile(start), re.compile(stop) if stop else None) for label, start, stop in _AREAS]
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread ("))]
        if not raw or _WAITING.match(raw[-1]):
            waiting += count
            continue
        frames = [_parse_frame(f) for f in raw]
        total += count
        fn, pkg = frames[-1]
        self_fn[fn] += count
        self_pkg[pkg] += count
        for key in {f for f, _ in frames}:
            cum_fn[key] += count
        for key in {p for _, p in frames}:
            cum_pkg[key] += count
        for label, start, stop in areas:
            if _area_hit(frames, start, stop):
                area_counts[label] += count
    if total == 0:
        return f"{path}: no samples"

    def table(title: str, counter: Counter[str], n: int) -> list[str]:
        rows = [f"{title}"]
        rows += [f"  {100 * c / total:5.1f}%  {key}" for key, c in counter.most_common(n)]
        return rows

    out = [f"py-spy samples: {total} (non-idle; {waiting} thread-wait samples dropped) from {path}"]
    out += table(f"top {top} self time by function:", self_fn, top)
    out += table(f"top {top} self time by package:", self_pkg, top)
    out += table(f"top {2 * top} cumulative time by function:", cum_fn, 2 * top)
    out += table(f"top {top} cumulative time by package:", cum_pkg, top)
    out.append("request-path areas (% of samples; nested areas exclude the inner part):")
    out += [f"  {100 * area_counts[label] / total:5.1f}%  {label}" for label, _, _ in _AREAS]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summarise(args.file, args.top))


if __name__ == "__main__":
    main()
