"""The composition root takes its builders as parameters: a test wires an in-memory store
through the very code `keel serve` runs, and every protocol's services work over it."""

from __future__ import annotations

from pathlib import Path

from keel.admission import Caller, Outcome, Ticket
from keel.admission.operations import PROFILES_CREATE
from keel.bootstrap.lifecycle import build_services
from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.domain.profile import JSONObject
from keel.observability.database import DatabaseObserver
from keel.service.auth import issue_api_key
from keel.service.ports import Store
from keel.storage.migrations.runner import head_revision
from tests.fakes import InMemoryStore

DOC: JSONObject = {"handle": "ada_l", "emails": [{"address": "ada@example.com", "primary": True}]}


class MigratedInMemoryStore(InMemoryStore):
    """The in-memory store, at the schema revision this code needs (the root checks it)."""

    async def schema_revision(self) -> str | None:
        return head_revision()


async def test_an_in_memory_store_wired_through_the_root_serves_the_use_cases(tmp_path: Path) -> None:
    store = MigratedInMemoryStore()
    opened: list[Store] = []

    async def open_in_memory(settings: Settings, observer: DatabaseObserver) -> Store:
        opened.append(store)
        return store

    services = await build_services(
        Settings(database_url=f"sqlite:///{tmp_path / 'never-opened.db'}"), store_opener=open_in_memory
    )
    try:
        assert opened == [store]
        assert not (tmp_path / "never-opened.db").exists()
        core = services.local
        issued = await issue_api_key(
            core.store,
            core.clock,
            scopes=[Scope.PROFILES_READ, Scope.PROFILES_WRITE],
            api_version="2026-11-28",
            name="t",
        )
        principal = await services.authenticator.authenticate(issued.token)
        ticket = await services.admission.enter(Caller(principal, "192.0.2.1"), PROFILES_CREATE)
        assert isinstance(ticket, Ticket)
        created = await services.profiles.create_profile(principal, DOC)
        await ticket.finish(Outcome(succeeded=True))
        read = await services.profiles.read_profile(principal, created.profile.id)
        assert read.profile.fields.handle == "ada_l"
        assert (await services.readiness())[0]
    finally:
        await services.close()
