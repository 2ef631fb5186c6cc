"""A discrete-event simulation of the admission path, on a virtual clock, running Keel's own
controller code: HAProxy's queue in front of one Keel process, fed by the agent check, then
Keel's load shedder under its adaptive concurrency limit (`keel.resilience`), then the
process's one event loop.

What is modelled, and how:
- Arrivals: a Poisson stream per kind of request at its offered rate: reads and writes
  (critical), lists (sheddable), as the spike scenario sends them (bench/ratelimit/spike.py).
- HAProxy: the server's `maxconn` is what the agent check answers (`agent_line` of the
  shedder's `steady_concurrency`), read every `agent_interval` (500 ms in
  deploy/haproxy/haproxy.cfg). A request past `maxconn` waits in the proxy's queue, lists
  behind reads and writes (`set-priority-class`), and is answered 503 by HAProxy when it has
  waited `timeout_queue`. HAProxy's own time per request is not modelled (it runs on another
  core in the real runs, bench/proxy_queue.py).
- Keel: `LoadShedder.try_admit` with the request's priority, then `release` with its latency,
  exactly as the request pipeline calls them, on the simulation's clock. A refusal by Keel
  costs `refusal_seconds` of the event loop.
- The event loop: processor sharing on one core: n requests in the process each progress at
  1/n of the CPU. Each request's CPU time is drawn from the measured samples of its kind.
- Not modelled: the event loop's lag measurement (with the proxy holding the excess, requests
  do not wait in the process's socket), Redis decisions (rate limits off, as in the spike
  scenario), and the client's network.

Every figure is per simulated run; `simulate` is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count

from testkit.percentile import percentile

from keel.observability.agent_check import agent_line
from keel.resilience.adaptive_limit import GradientLimit
from keel.resilience.load_shedder import LoadShedder, Priority

KINDS: Mapping[str, Priority] = {
    "read": Priority.CRITICAL,
    "write": Priority.CRITICAL,
    "list": Priority.SHEDDABLE,
}
PROXY_CLASS = {"read": 0, "write": 0, "list": 10}  # deploy/haproxy/haproxy.cfg: lists dequeued last


@dataclass(frozen=True)
class Setting:
    streams: Mapping[str, float]  # kind -> offered requests/s
    duration_s: float
    cpu_samples: Mapping[str, Sequence[float]]  # kind -> measured CPU seconds per request
    timeout_queue_s: float = 1.0
    agent_interval_s: float = 0.5
    # Keel's CPU for one refusal: a 429 cost 78.8 and 109 µs in the two runs of
    # docs/performance/2026-12-07-proxy-refusals*.md (HTTP in, key, limiter, problem out); a
    # shed refusal skips the key and the limiter, so it costs at most that.
    refusal_seconds: float = 0.00008
    proxy: bool = True  # without it every request reaches Keel, which sheds the excess
    warmup_s: float = 2.0  # requests that arrived (or were answered) before this are not counted
    # Explicit (time, kind) arrivals in place of the Poisson streams (tests, what-if studies).
    arrivals: Sequence[tuple[float, str]] | None = None
    # HAProxy's maxconn held at this, in place of the agent check's answers.
    fixed_maxconn: int | None = None


@dataclass
class Outcome:
    kind: str
    arrived: float
    answered: float
    status: int  # 0 while unanswered; 200, or 503 by Keel ("keel") or by the proxy ("proxy")
    refused_by: str | None = None
    forwarded: bool = False  # reached Keel

    @property
    def latency(self) -> float:
        return self.answered - self.arrived


@dataclass
class Result:
    setting: Setting
    outcomes: list[Outcome] = field(default_factory=list)
    limits: list[tuple[float, float]] = field(default_factory=list)  # (time, Keel's limit)
    arrivals: int = 0
    # Per kind, the no-load latency Keel's controller judged it against at the end of the run.
    no_load_at_end: dict[str, float] = field(default_factory=dict)

    def counted(self) -> list[Outcome]:
        """Requests that arrived after the warm-up and before the end: each one's fate."""
        return [o for o in self.outcomes if self.setting.warmup_s <= o.arrived < self.setting.duration_s]

    def goodput_rps(self) -> float:
        """Served answers given between the warm-up and the end, per second: work done after
        the end (requests still queued then) is not credited to the run."""
        start, end = self.setting.warmup_s, self.setting.duration_s
        served = [o for o in self.outcomes if o.status == 200 and start <= o.answered < end]
        return len(served) / (end - start)

    def mean_limit(self) -> float:
        """Keel's concurrency limit, averaged over the agent's readings after the warm-up."""
        return statistics.fmean(limit for at, limit in self.limits if at >= self.setting.warmup_s)

    def success_rate(self, priority: Priority) -> float:
        mine = [o for o in self.counted() if KINDS[o.kind] is priority]
        return sum(o.status == 200 for o in mine) / len(mine) if mine else 1.0

    def p(self, q: float, *, served: bool, kind: str | None = None) -> float:
        """The `q` percentile (nearest rank, as the real scenarios) of the latencies of served
        (or refused) requests, of `kind` or all; NaN when there are none."""
        return percentile(
            [
                o.latency
                for o in self.counted()
                if (o.status == 200) is served and (kind is None or o.kind == kind)
            ],
            q,
        )


@dataclass
class _Job:
    outcome: Outcome
    remaining: float
    admitted_at: float | None  # None for a refusal's own work


class _Simulation:
    def __init__(self, setting: Setting, seed: int) -> None:
        self.s = setting
        self.random = random.Random(seed)
        self.now = 0.0
        self.limit = GradientLimit(clock=lambda: self.now)
        self.shedder = LoadShedder(self.limit, clock=lambda: self.now)
        self.maxconn = self.agent_maxconn()
        self.events: list[tuple[float, int, str, object]] = []
        self.order = count()
        self.jobs: list[_Job] = []  # in the event loop, sharing its CPU
        self.forwarded = 0  # connections HAProxy holds open to the node
        self.queue: list[tuple[int, int, Outcome]] = []  # (class, order, outcome)
        self.result = Result(setting)
        self.last = 0.0
        self.completion_version = 0

    def agent_maxconn(self) -> int:
        """What HAProxy holds the node to: the agent check's answer, or the fixed value."""
        if self.s.fixed_maxconn is not None:
            return self.s.fixed_maxconn
        return int(agent_line(self.shedder.steady_concurrency()).split(b":")[1])

    def at(self, when: float, kind: str, payload: object = None) -> None:
        heapq.heappush(self.events, (when, next(self.order), kind, payload))

    def run(self) -> Result:
        if self.s.arrivals is not None:
            for t, kind in self.s.arrivals:
                self.at(t, "arrival", kind)
                self.result.arrivals += 1
        for kind, rate in self.s.streams.items():
            t = self.random.expovariate(rate) if rate > 0 else self.s.duration_s
            while t < self.s.duration_s:
                self.at(t, "arrival", kind)
                self.result.arrivals += 1
                t += self.random.expovariate(rate)
        tick = 0.0
        while tick < self.s.duration_s:
            tick += self.s.agent_interval_s
            self.at(tick, "agent")
        while self.events:
            when, _, kind, payload = heapq.heappop(self.events)
            self.advance(when)
            if kind == "arrival":
                assert isinstance(payload, str)
                self.arrive(Outcome(payload, when, when, 0))
            elif kind == "agent":
                self.maxconn = self.agent_maxconn()
                self.result.limits.append((when, self.limit.limit))
                self.dequeue()
            elif kind == "complete" and payload == self.completion_version:
                self.complete_due()
            elif kind == "expire":
                assert isinstance(payload, Outcome)
                self.expire(payload)
        for kind in self.s.cpu_samples:
            baseline = self.limit.no_load_seconds(kind)
            if baseline is not None:
                self.result.no_load_at_end[kind] = baseline
        return self.result

    # -- the event loop: processor sharing ----------------------------------------------------

    def advance(self, when: float) -> None:
        if self.jobs and when > self.last:
            share = (when - self.last) / len(self.jobs)
            for job in self.jobs:
                job.remaining -= share
        self.last = self.now = when

    def schedule_completion(self) -> None:
        self.completion_version += 1
        if self.jobs:
            first = min(job.remaining for job in self.jobs)
            self.at(self.now + max(first, 0.0) * len(self.jobs), "complete", self.completion_version)

    def complete_due(self) -> None:
        done = [job for job in self.jobs if job.remaining <= 1e-12]
        self.jobs = [job for job in self.jobs if job.remaining > 1e-12]
        for job in done:
            job.outcome.answered = self.now
            if job.admitted_at is not None:
                job.outcome.status = 200
                self.shedder.release(job.outcome.kind, job.admitted_at)
            self.result.outcomes.append(job.outcome)
            if self.s.proxy:
                self.forwarded -= 1
        self.schedule_completion()
        if self.s.proxy:
            self.dequeue()

    # -- HAProxy and Keel ------------------------------------------------------------------------

    def arrive(self, outcome: Outcome) -> None:
        if not self.s.proxy or self.forwarded < self.maxconn:
            self.forward(outcome)
            return
        heapq.heappush(self.queue, (PROXY_CLASS[outcome.kind], next(self.order), outcome))
        self.at(self.now + self.s.timeout_queue_s, "expire", outcome)

    def dequeue(self) -> None:
        while self.queue and self.forwarded < self.maxconn:
            _, _, outcome = heapq.heappop(self.queue)
            if outcome.status == 0:  # not expired
                self.forward(outcome)

    def expire(self, outcome: Outcome) -> None:
        if outcome.forwarded:
            return  # dequeued before its time was up
        outcome.status, outcome.refused_by, outcome.answered = 503, "proxy", self.now
        self.result.outcomes.append(outcome)

    def forward(self, outcome: Outcome) -> None:
        outcome.forwarded = True
        if self.s.proxy:
            # HAProxy opens no connection past maxconn (one lowered since may leave more open).
            assert self.forwarded < self.maxconn, (self.forwarded, self.maxconn)
            self.forwarded += 1
        admitted_at = self.shedder.try_admit(KINDS[outcome.kind])
        if admitted_at is None:
            outcome.status, outcome.refused_by = 503, "keel"
            self.jobs.append(_Job(outcome, self.s.refusal_seconds, None))
        else:
            work = self.random.choice(self.s.cpu_samples[outcome.kind])
            self.jobs.append(_Job(outcome, work, admitted_at))
        self.schedule_completion()


def simulate(setting: Setting, seed: int) -> Result:
    """One run of `setting` with `seed`: every arrival answered once, by the proxy or by Keel."""
    return _Simulation(setting, seed).run()
