"""The refusals Keel writes to HAProxy (keel.ratelimit.proxy_refusals), against a real HAProxy
running the deployed configuration, with no node up (a request HAProxy lets through gets its own
503): deadlines in unix milliseconds, their low 32 bits in the table, and HAProxy's arithmetic
modulo 2^32 over them. The publisher's wall clock is moved by minutes, so no outcome depends on
how long a step takes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from testkit.ports import free_port
from testkit.servers.haproxy import Haproxy, haproxy, operator_socket

from keel.ratelimit.proxy_refusals import MAX_HOLD_MS, HaproxyRefusals

KEY = "abcdefghijklmnop"
OTHER = "qrstuvwxyz234567"


def _token(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer keel_{key_id}_{'s' * 43}"}


def _held(proxy: Haproxy) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"key=(\S+) .*gpt0=(\d+)", proxy.command("show table keel_refused"))
    }


def _publisher(proxy: Haproxy, offset_s: float) -> tuple[HaproxyRefusals, Counter]:
    counter = Counter("refusals", "t", ["outcome"], registry=CollectorRegistry())
    publisher = HaproxyRefusals(
        [f"unix:{operator_socket(proxy.admin_socket)}"],
        "keel_refused",
        counter,
        wall_clock=lambda: time.time() + offset_s,
    )
    return publisher, counter


async def test_haproxy_refuses_a_key_until_its_deadline_and_no_longer(tmp_path: Path) -> None:
    with haproxy(tmp_path / "haproxy", [("node", free_port())]) as proxy:
        ahead, counter = _publisher(proxy, offset_s=1800.0)  # its clock 30 min ahead
        ahead.refused(KEY, 1_000)  # 1 ms from its now: 30 min from HAProxy's
        ahead.refused("not-a-key;show info", 60_000_000)  # nothing but a key id is ever sent
        await ahead.flush()
        held = _held(proxy)
        assert list(held) == [KEY]
        left_ms = (held[KEY] - int(time.time() * 1000)) & 0xFFFFFFFF
        assert 1_790_000 < left_ms <= 1_800_001
        assert counter.labels("sent")._value.get() == 1

        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            refused = await client.get("/v1/profiles/x", headers=_token(KEY))
            assert refused.status_code == 429
            assert 1_790 <= int(refused.headers["Retry-After"]) <= 1_801
            assert refused.json()["refused_by"] == "proxy"
            passed = await client.get("/v1/profiles/x", headers=_token(OTHER))
            assert passed.status_code == 503  # let through, to no node

            # A deadline already passed (its clock 10 s behind, 5 s of wait) refuses nothing.
            behind, _ = _publisher(proxy, offset_s=-10.0)
            behind.refused(OTHER, 5_000_000)
            await behind.flush()
            assert OTHER in _held(proxy)
            assert (await client.get("/v1/profiles/x", headers=_token(OTHER))).status_code == 503

            # Refusals of one key before a batch leaves: one command, with the latest deadline.
            sent = counter.labels("sent")._value.get()
            ahead.refused(KEY, 2_000_000)
            ahead.refused(KEY, 5_000_000)
            ahead.refused(KEY, 3_000_000)
            await ahead.flush()
            assert counter.labels("sent")._value.get() == sent + 1
            left_ms = (_held(proxy)[KEY] - int(time.time() * 1000)) & 0xFFFFFFFF
            assert 1_804_000 < left_ms <= 1_805_001

            # Units given back after the deadline was sent (a 304): withdrawn, and let through.
            ahead.refunded(KEY)
            await ahead.flush()
            assert KEY not in _held(proxy)
            assert (await client.get("/v1/profiles/x", headers=_token(KEY))).status_code == 503
            ahead.refused(KEY, 1_000)  # held again

            # A wait past an hour is held for an hour (an entry's life): never wrapped around.
            longest, _ = _publisher(proxy, offset_s=0.0)
            longest.refused(OTHER, 10 * 3_600_000_000)
            await longest.flush()
            left_ms = (_held(proxy)[OTHER] - int(time.time() * 1000)) & 0xFFFFFFFF
            assert MAX_HOLD_MS - 60_000 < left_ms <= MAX_HOLD_MS
            assert (await client.get("/v1/profiles/x", headers=_token(OTHER))).status_code == 429

            # Forgiven (the key changed): cleared, and let through.
            await ahead.flush()
            assert KEY in _held(proxy)
            ahead.forgive(KEY)
            await ahead.flush()
            assert KEY not in _held(proxy)
            assert (await client.get("/v1/profiles/x", headers=_token(KEY))).status_code == 503

            # The limits switched off: the whole table emptied, and what was waiting not sent.
            ahead.refused(KEY, 1_000)
            await ahead.flush()
            ahead.refused("abcdefghijklmnoq", 1_000)
            ahead.forgive_all()
            await ahead.flush()
            assert _held(proxy) == {}
            assert (await client.get("/v1/profiles/x", headers=_token(OTHER))).status_code == 503


async def test_a_proxy_that_does_not_answer_loses_the_batch_and_says_so(tmp_path: Path) -> None:
    counter = Counter("refusals", "t", ["outcome"], registry=CollectorRegistry())
    publisher = HaproxyRefusals([f"unix:{tmp_path / 'absent.sock'}"], "keel_refused", counter)
    publisher.refused(KEY, 60_000_000)
    await publisher.flush()
    assert counter.labels("failed")._value.get() == 1
    assert counter.labels("sent")._value.get() == 0
    await publisher.flush()  # the refusal is gone: sent again only when Keel refuses again
    assert counter.labels("failed")._value.get() == 1
    # A clear no proxy took is tried again at the next batch.
    publisher.forgive(KEY)
    await publisher.flush()
    await publisher.flush()
    assert counter.labels("failed")._value.get() == 3


async def test_a_clear_is_owed_to_each_proxy_until_it_takes_it(tmp_path: Path) -> None:
    """Two proxies, one not answering: the one that took a clear is not sent it again, the
    other is owed it, and the sender's own task tries it again without being asked."""
    with haproxy(tmp_path / "haproxy", [("node", free_port())]) as proxy:
        counter = Counter("refusals", "t", ["outcome"], registry=CollectorRegistry())
        addresses = [f"unix:{operator_socket(proxy.admin_socket)}", f"unix:{tmp_path / 'absent.sock'}"]
        publisher = HaproxyRefusals(addresses, "keel_refused", counter, retry_s=0.01)
        publisher.refused(KEY, 60_000_000)
        await publisher.flush()
        assert KEY in _held(proxy)
        assert (counter.labels("sent")._value.get(), counter.labels("failed")._value.get()) == (1, 1)
        publisher.forgive(KEY)
        await publisher.flush()
        assert KEY not in _held(proxy)
        assert (counter.labels("sent")._value.get(), counter.labels("failed")._value.get()) == (2, 2)
        assert publisher.pending()  # owed to the proxy that did not answer
        proxy.command(f"set table keel_refused key {KEY} data.gpt0 1")  # would show a second clear
        task = asyncio.create_task(publisher.run())
        try:
            deadline = time.monotonic() + 30  # the forgive above woke it; then, its retries
            while counter.labels("failed")._value.get() < 5 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
        assert counter.labels("failed")._value.get() >= 5  # tried again, on its own
        assert counter.labels("sent")._value.get() == 2  # never again to the one that took it
        assert KEY in _held(proxy)


async def test_a_served_process_clears_the_proxy_when_keys_change_and_limits_go_off(
    tmp_path: Path,
) -> None:
    """The wiring (keel.bootstrap): the kill switch seen thrown empties the proxy's table, and
    the key-change push (one key, or all after a missed push) clears what it names there."""
    from keel.bootstrap.lifecycle import _key_changes, build_services
    from keel.config import Settings
    from keel.storage.migrations.runner import migrate
    from tests.conftest import environment_layout

    url = f"sqlite:///{tmp_path / 'keel.sqlite3'}"
    await asyncio.to_thread(migrate, url, layout=environment_layout())
    with haproxy(tmp_path / "haproxy", [("node", free_port())]) as proxy:
        keel = await build_services(
            Settings(database_url=url, proxy_runtime_api=f"unix:{operator_socket(proxy.admin_socket)}")
        )
        try:
            refusals, guard = keel.proxy_refusals, keel.rate_limits
            assert refusals is not None
            assert guard is not None
            forget_key, forget_all = _key_changes(keel)
            switched_off = guard.on_switched_off
            assert switched_off is not None
            steps: list[Callable[[], None]] = [lambda: forget_key(KEY), forget_all, switched_off]
            for clearing_step in steps:
                refusals.refused(KEY, 60_000_000)
                await refusals.flush()
                assert KEY in _held(proxy)
                clearing_step()
                await refusals.flush()
                assert KEY not in _held(proxy)
        finally:
            await keel.close()


async def test_a_clear_stays_owed_through_a_new_refusal_until_the_proxy_takes_it(tmp_path: Path) -> None:
    """A key changed (cleared) and refused again while a proxy is down: when that proxy comes
    back, it is still told the clear, so it does not keep the deadline of the old terms."""
    later = tmp_path / "later"
    counter = Counter("refusals", "t", ["outcome"], registry=CollectorRegistry())
    publisher = HaproxyRefusals([f"unix:{operator_socket(later / 'admin.sock')}"], "keel_refused", counter)
    publisher.forgive(KEY)
    await publisher.flush()  # not running yet: the clear is owed
    publisher.refused(KEY, 60_000_000)
    await publisher.flush()  # the new deadline is lost with it; the clear is owed still
    assert publisher.pending()
    with haproxy(later, [("node", free_port())]) as proxy:
        stale = int(time.time() * 1000 + 600_000) & 0xFFFFFFFF  # the old terms' deadline
        proxy.command(f"set table keel_refused key {KEY} data.gpt0 {stale}")
        await publisher.flush()
        assert KEY not in _held(proxy)
        assert not publisher.pending()


async def test_a_new_refusal_goes_at_once_while_a_proxy_is_owed_clears(tmp_path: Path) -> None:
    with haproxy(tmp_path / "haproxy", [("node", free_port())]) as proxy:
        counter = Counter("refusals", "t", ["outcome"], registry=CollectorRegistry())
        addresses = [f"unix:{operator_socket(proxy.admin_socket)}", f"unix:{tmp_path / 'absent.sock'}"]
        publisher = HaproxyRefusals(addresses, "keel_refused", counter, retry_s=3600.0)
        publisher.forgive(OTHER)  # owed to the absent one for as long as it is absent
        task = asyncio.create_task(publisher.run())
        try:
            deadline = time.monotonic() + 30
            while counter.labels("failed")._value.get() < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # its first try: the task now waits to retry
            assert counter.labels("failed")._value.get() >= 1
            publisher.refused(KEY, 60_000_000)  # must not wait out the retry interval (an hour)
            deadline = time.monotonic() + 30
            while KEY not in _held(proxy) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            assert KEY in _held(proxy)
        finally:
            task.cancel()


async def test_too_many_clears_owed_to_one_proxy_empty_its_table_not_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keel.ratelimit import proxy_refusals

    monkeypatch.setattr(proxy_refusals, "MAX_WAITING", 3)
    with haproxy(tmp_path / "haproxy", [("node", free_port())]) as proxy:
        counter = Counter("refusals", "t", ["outcome"], registry=CollectorRegistry())
        addresses = [f"unix:{operator_socket(proxy.admin_socket)}", f"unix:{tmp_path / 'absent.sock'}"]
        publisher = HaproxyRefusals(addresses, "keel_refused", counter)
        publisher.refused(OTHER, 60_000_000)
        await publisher.flush()
        for key in ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc", "dddddddddddddddd"):
            publisher.forgive(key)  # the live proxy takes each; the absent one owes them
            await publisher.flush()
        assert OTHER in _held(proxy)  # the live proxy was told only the four keys
        assert publisher.pending()  # the absent one owes its whole table now
