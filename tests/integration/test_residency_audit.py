"""`keel residency audit`, run as an operator runs it, on each database kind: a region's database
that holds only its own profiles is reported clean (exit 0); one that also holds another
region's profiles (written by a service configured for that region, as a misconfigured
deployment would) is reported with the tables and some of the ids (exit 1); several regions are
audited in one run, each against its own region."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
from testkit.processes import keel_run

from keel.storage.migrations.runner import migrate
from tests.integration.test_migrations_up_and_down import database


def _env(url: str, region: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "KEEL_DATABASE_URL": url,
        "KEEL_REGION": region,
    }


def _seeded(url: str, region: str, count: int) -> None:
    # A seed of its own per region: the same one would make the same handles, skipped as present.
    done = keel_run(_env(url, region), "seed", "--count", str(count), "--seed", str(sum(map(ord, region))))
    assert done.returncode == 0, done.stderr
    assert f"created {count} profiles" in done.stdout, done.stdout


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_region_holding_only_its_own_profiles_is_clean_and_another_regions_are_found(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = await database(kind, tmp_path, request, "keel_residency_audit")
    await asyncio.to_thread(migrate, url)
    _seeded(url, "eu1", 3)
    clean = keel_run(_env(url, "eu1"), "residency", "audit")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "region eu1" in clean.stdout
    assert "nothing of another region" in clean.stdout

    _seeded(url, "us1", 2)  # a service configured for us1 on eu1's database
    found = keel_run(_env(url, "eu1"), "residency", "audit")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "profiles" in found.stdout
    assert "event_outbox.subject" in found.stdout  # the creates' events
    assert "(us1)" in found.stdout
    # Seen from us1, eu1's profiles are the foreign ones.
    assert keel_run(_env(url, "us1"), "residency", "audit").returncode == 1


def test_several_regions_are_audited_each_against_its_own(tmp_path: Path) -> None:
    eu, us = (f"sqlite:///{tmp_path / name}" for name in ("eu1.sqlite3", "us1.sqlite3"))
    for url, region in ((eu, "eu1"), (us, "us1")):
        migrate(url)
        _seeded(url, region, 2)
    both = ("residency", "audit", "--store", f"eu1={eu}", "--store", f"us1={us}")
    clean = keel_run(_env(eu, "eu1"), *both)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.count("nothing of another region") == 2
    swapped = keel_run(_env(eu, "eu1"), "residency", "audit", "--store", f"eu1={us}")
    assert swapped.returncode == 1
    bad = keel_run(_env(eu, "eu1"), "residency", "audit", "--store", "EU=nowhere")
    assert bad.returncode == 2  # a usage error, not an audit
    missing = tmp_path / "none" / "x.db"
    assert (
        keel_run(_env(eu, "eu1"), "residency", "audit", "--store", f"eu1=sqlite:///{missing}").returncode == 2
    )
    assert not missing.parent.exists()  # a mistyped path is not created
    # Every store is audited: one unreadable (not a database), one with findings; exit 2.
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    mixed = keel_run(
        {**_env(eu, "eu1"), "US_DATABASE": eu},
        "residency",
        "audit",
        "--store",
        f"eu1=sqlite:///{garbage}",
        "--store",
        "us1=env:US_DATABASE",  # eu1's database, audited as us1's: its profiles are foreign
    )
    assert mixed.returncode == 2, mixed.stdout + mixed.stderr
    assert "could not be read" in mixed.stderr
    assert "profiles.id" in mixed.stdout


def test_a_stored_outcome_of_another_regions_profile_is_found(tmp_path: Path) -> None:
    """An idempotency record keeps a create's answer, a whole profile, for a day."""
    url = f"sqlite:///{tmp_path / 'eu1.sqlite3'}"
    migrate(url)
    with sqlite3.connect(tmp_path / "eu1.sqlite3") as connection:
        connection.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, state, outcome, locked_until, expires_at)"
            " VALUES ('k', 'create-1', 'f', 'completed', ?, ?, ?)",
            (
                '{"status": 201, "id": "us1_01M977N90FNC0XW4XT2ZE1XM79", "handle": "ada"}',
                "2026-12-07T00:00:00+00:00",
                "2999-01-01T00:00:00+00:00",
            ),
        )
    found = keel_run(_env(url, "eu1"), "residency", "audit")
    assert found.returncode == 1, found.stdout + found.stderr
    assert (
        "idempotency_keys.outcome: 1 rows of other regions, e.g. us1_01M977N90FNC0XW4XT2ZE1XM79 (us1)"
        in found.stdout
    )
