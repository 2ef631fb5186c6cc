"""Checking every answer of a wrk run, not only its status line counts.

wrk counts non-2xx/3xx answers, but a GraphQL server reports most failures as a 200 whose body
carries `errors`, and a benchmark of such answers measures failures, not reads. `ANSWER_CHECK_LUA`
is appended to a wrk script: its `response` callback looks at each answer (status and body) and
its `done` callback prints one `answers:` line with the counts, which `parse_answers` reads and
`answer_failures` judges. (Defining `response` costs wrk some throughput: give it to every side
of a comparison.)

A body carries GraphQL errors when it holds an object key `"errors"` (an unescaped quoted
`errors` followed by a colon: inside a JSON string its quotes would be escaped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSWER_CHECK_LUA = """
-- bench/wrk_answers.py: count every answer that is not a 2xx, or that carries GraphQL errors.
answers = 0
non_2xx = 0
graphql_errors = 0
local checked_threads = {}

function setup(thread)
  checked_threads[#checked_threads + 1] = thread
end

function response(status, headers, body)
  answers = answers + 1
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  elseif body ~= nil and string.find(body, '"errors"%s*:') then
    graphql_errors = graphql_errors + 1
  end
end

function done(summary, latency, requests)
  local a, n, g = 0, 0, 0
  for _, thread in ipairs(checked_threads) do
    a = a + thread:get("answers")
    n = n + thread:get("non_2xx")
    g = g + thread:get("graphql_errors")
  end
  io.write(string.format("answers: checked=%d non_2xx=%d graphql_errors=%d\\n", a, n, g))
end
"""

_ANSWERS = re.compile(r"^answers: checked=(\d+) non_2xx=(\d+) graphql_errors=(\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class AnswerCounts:
    checked: int
    non_2xx: int
    graphql_errors: int


def parse_answers(wrk_stdout: str) -> AnswerCounts:
    """The counts `ANSWER_CHECK_LUA` printed; a run without them was not checked, which is an
    error rather than a pass."""
    match = _ANSWERS.search(wrk_stdout)
    if match is None:
        raise RuntimeError(f"wrk printed no `answers:` line (was ANSWER_CHECK_LUA loaded?):\n{wrk_stdout}")
    checked, non_2xx, graphql_errors = map(int, match.groups())
    return AnswerCounts(checked, non_2xx, graphql_errors)


def answer_failures(name: str, counts: AnswerCounts) -> list[str]:
    """Why a measured run's answers void its figure; empty when every answer was a clean 2xx."""
    failures = []
    if counts.checked == 0:
        failures.append(f"{name}: no answer was checked")
    if counts.non_2xx:
        failures.append(f"{name}: {counts.non_2xx} of {counts.checked} answers were not 2xx")
    if counts.graphql_errors:
        failures.append(
            f"{name}: {counts.graphql_errors} of {counts.checked} 2xx answers carried GraphQL errors"
        )
    return failures
