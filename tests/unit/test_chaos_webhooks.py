"""Negative controls for experiment 11 (failing webhook endpoints): the figures of chaos/webhooks.py
on synthetic receipts, and experiment 11's own checks on synthetic runs. An early or late retry,
an attempt too many, a forged or misdirected signature, a delivery never made or a healthy
endpoint slowed by the others must each fail; a clean run must pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from chaos.measures import Run, evaluate_probe
from chaos.runner import EXPERIMENTS
from chaos.traffic import Sample
from chaos.webhooks import (
    Committed,
    Received,
    Registered,
    Schedule,
    healthy_samples,
    schedule_figures,
    signature_ok,
    undelivered,
)

SCHEDULE = Schedule(delays=(0.25, 0.5, 1.0), jitter=0.2, poll_seconds=0.1, attempt_timeout_seconds=0.5)
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
T0 = 1000.0


def body(event_id: str, at: float = 1.7e9) -> str:
    time = datetime.fromtimestamp(at, UTC).isoformat()
    return json.dumps({"id": event_id, "type": "keel.profile.created.v1", "time": time})


def sign(secret: str, event_id: str, timestamp: str, text: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{event_id}.{timestamp}.{text}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def received(endpoint: str, event_id: str, at: float, answer: str = "500", wall: float = 1.7e9) -> Received:
    text = body(event_id)
    return Received(
        endpoint, at, wall, event_id, "1700000000", sign(SECRET, event_id, "1700000000", text), text, answer
    )


def retried(endpoint: str, event_id: str, gaps: list[float], answer: str = "500") -> list[Received]:
    times = [T0]
    for gap in gaps:
        times.append(times[-1] + gap)
    return [received(endpoint, event_id, at, answer) for at in times]


def figures(receipts: list[Received], **kw: Any) -> dict[str, float]:
    options: dict[str, Any] = {"until": T0 + 100, "hung": {}, "on_time": {"failing"}} | kw
    return schedule_figures(receipts, SCHEDULE, **options)


def test_retries_on_schedule_pass_and_are_counted() -> None:
    on_time = retried("failing", "e1", [0.25, 0.5, 1.0]) + retried("failing", "e2", [0.2, 0.4, 0.8])
    # Just inside the late edge: delay + 20 % jitter + 0.1 s poll + 0.5 s margin.
    late_edge = retried("failing", "e3", [0.89, 1.19, 1.79])
    assert figures(on_time + late_edge) == {
        "webhook_retries_early": 0.0,
        "webhook_retries_late": 0.0,
        "webhook_retries_checked": 9.0,
        "webhook_excess_attempts": 0.0,
    }


def test_a_retry_before_its_delay_is_early() -> None:
    # 0.25 s less 20 % jitter is 0.2 s; less the 0.1 s margin, 0.1 s: 0.05 s is early.
    assert figures(retried("failing", "e1", [0.05, 0.5, 1.0]))["webhook_retries_early"] == 1


def test_a_hung_endpoints_retry_is_early_unless_its_timeout_passed_too() -> None:
    gaps = [0.3, 0.6, 1.1]  # on time for an endpoint that answers, not for one that hangs 0.5 s
    assert figures(retried("slow", "e1", gaps, "hang"))["webhook_retries_early"] == 0
    assert figures(retried("slow", "e1", gaps, "hang"), hung={"slow": T0 + 100})["webhook_retries_early"] == 3
    assert (
        figures(retried("slow", "e1", [0.8, 1.1, 1.6], "hang"), hung={"slow": T0 + 100})[
            "webhook_retries_early"
        ]
        == 0
    )


def test_an_attempt_the_mend_closed_is_not_timed_as_a_timeout() -> None:
    # Received 0.1 s before the hang ended: closed by the endpoint then, retried 0.25 s later.
    closed_early = retried("slow", "e1", [0.35], "hang")
    assert figures(closed_early, hung={"slow": T0 + 0.1}) | {"webhook_excess_attempts": 0.0} == {
        "webhook_retries_early": 0.0,
        "webhook_retries_late": 0.0,
        "webhook_retries_checked": 0.0,
        "webhook_excess_attempts": 0.0,
    }
    # Had it hung on, that retry would have come before the timeout plus the delay.
    assert figures(closed_early, hung={"slow": T0 + 100})["webhook_retries_early"] == 1


def test_a_late_retry_counts_only_on_endpoints_held_to_time() -> None:
    late = retried("failing", "e1", [2.0, 0.5, 1.0])
    assert figures(late)["webhook_retries_late"] == 1
    assert figures(late, on_time=set())["webhook_retries_late"] == 0


def test_attempts_beyond_the_schedule_count_until_the_replay() -> None:
    five = retried("failing", "e1", [0.25, 0.5, 1.0, 3.0])
    assert figures(five)["webhook_excess_attempts"] == 1
    assert figures(five, until=five[-1].at)["webhook_excess_attempts"] == 0  # the fifth came after


def test_only_a_signature_made_with_the_endpoints_secret_over_this_body_verifies() -> None:
    good = received("failing", "e1", T0)
    assert signature_ok(SECRET, good)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    assert not signature_ok(other, good)
    two = replace(good, signature=f"v1,AAAA {good.signature}")  # any listed signature may match
    assert signature_ok(SECRET, two)
    assert not signature_ok(SECRET, replace(good, signature="v1,AAAA"))
    assert not signature_ok(SECRET, replace(good, body=body("e2")))  # e1's signature, another body
    forged_id = Received(
        "failing", T0, 0, "e2", "1700000000", sign(SECRET, "e2", "1700000000", body("e1")), body("e1"), "200"
    )
    assert not signature_ok(SECRET, forged_id)


def test_an_event_is_delivered_only_by_a_2xx_and_only_wanted_events_count() -> None:
    endpoints = {
        "healthy": Registered("healthy", "whep_1", "u", SECRET, (), 100.0),
        "failing": Registered("failing", "whep_2", "u", SECRET, ("keel.profile.created.v1",), 100.0),
    }
    events = [
        Committed("old", "keel.profile.created.v1", 99.0),  # before the endpoints existed
        Committed("c1", "keel.profile.created.v1", 101.0),
        Committed("u1", "keel.profile.updated.v1", 102.0),
    ]
    receipts = [received("healthy", "c1", T0, "200"), received("failing", "c1", T0, "500")]
    assert undelivered(endpoints, events, receipts) == {"healthy": 1, "failing": 1}
    receipts += [received("healthy", "u1", T0, "200"), received("failing", "c1", T0 + 1, "200")]
    assert undelivered(endpoints, events, receipts) == {"healthy": 0, "failing": 0}


def test_the_healthy_endpoints_lag_runs_from_the_events_time_to_its_first_arrival() -> None:
    first = received("healthy", "e1", T0 + 5, "200", wall=1.7e9 + 0.25)
    again = received("healthy", "e1", T0 + 9, "200", wall=1.7e9 + 4.25)
    elsewhere = received("failing", "e2", T0 + 5, "500", wall=1.7e9 + 0.25)
    (sample,) = healthy_samples([again, first, elsewhere])
    assert sample.op == "webhook_healthy"
    assert sample.seconds == pytest.approx(0.25)
    assert sample.started == pytest.approx(T0 + 4.75)


# -- experiment 11's own checks on synthetic runs ------------------------------------------------

SPEC: dict[str, Any] = json.loads(next(EXPERIMENTS.glob("11-*.json")).read_text())
CLEAN = {
    "webhook_retries_early": 0.0,
    "webhook_retries_late": 0.0,
    "webhook_retries_checked": 40.0,
    "webhook_excess_attempts": 0.0,
    "webhook_dead_letters_min": 3.0,
    "webhook_dead_letters_miscounted": 0.0,
    "webhook_bad_signatures": 0.0,
    "webhook_undelivered": 0.0,
    "history_violations": 0.0,
    "acknowledged_writes": 200.0,
}


def check(name_part: str, run: Run) -> bool:
    probes = [p for p in SPEC["checks"] if name_part in p["name"]]
    assert len(probes) == 1, name_part
    return evaluate_probe(probes[0], run).passed


def clean_run(fault_lag: float = 0.01) -> Run:
    run = Run(started=T0, ended=T0 + 30, time_scale=0.5)
    run.phases = [(T0 + 10, "fault"), (T0 + 20, "recovery")]
    run.values.update(CLEAN)
    for phase_start, lag in ((T0, 0.01), (T0 + 10, fault_lag)):
        run.samples += [Sample("webhook_healthy", phase_start + i * 0.09, lag, 200) for i in range(100)]
        run.samples += [Sample("write", phase_start + i * 0.09, 0.02, 200) for i in range(100)]
    return run


@pytest.mark.parametrize(
    ("check_name", "key", "bad"),
    [
        ("before their delay", "webhook_retries_early", 1),
        ("later than delay", "webhook_retries_late", 1),
        ("retries timed", "webhook_retries_checked", 10),
        ("beyond the schedule", "webhook_excess_attempts", 1),
        ("dead letters at the replay", "webhook_dead_letters_min", 0),
        ("not after exactly", "webhook_dead_letters_miscounted", 1),
        ("signature does not verify", "webhook_bad_signatures", 1),
        ("never answered 2xx", "webhook_undelivered", 1),
    ],
)
def test_each_defect_fails_its_check_and_the_clean_run_passes_it(
    check_name: str, key: str, bad: float
) -> None:
    assert check(check_name, clean_run())
    run = clean_run()
    run.values[key] = bad
    assert not check(check_name, run)


def test_a_healthy_endpoint_slowed_by_the_others_fails() -> None:
    assert check("delivery lag of the healthy endpoint", clean_run(fault_lag=0.03))
    assert not check("delivery lag of the healthy endpoint", clean_run(fault_lag=0.05))
