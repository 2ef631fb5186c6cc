"""The `keel` command."""

from __future__ import annotations

import asyncio
import random
from typing import Annotated

import typer

from keel.config import Settings
from keel.domain.api_keys import Scope
from keel.domain.profile import JSONObject

app = typer.Typer(help="Keel: user profiles as a service.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema to the newest revision."""
    from keel.storage.migrations.runner import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.database_url)
    typer.echo(f"migrated {settings.redacted_database_url()}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Defaults to KEEL_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Defaults to KEEL_PORT.")] = None,
) -> None:
    """Serve the REST API with uvicorn (uvloop, httptools), one process."""
    import uvicorn

    from keel.bootstrap import SchemaNotCurrent, create_app, preflight

    settings = Settings()
    try:
        asyncio.run(preflight(settings))
    except (SchemaNotCurrent, ValueError, OSError) as error:
        # A clear sentence instead of a traceback from inside the server's start-up.
        typer.echo(f"keel: cannot start: {error}", err=True)
        raise typer.Exit(1) from None
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # Keel writes its own access log, with request and trace ids
        log_config=None,
        server_header=False,
    )


@keys_app.command("create")
def keys_create(
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: profiles:read, profiles:write, admin.")
    ] = "profiles:read,profiles:write",
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "default",
    api_version: Annotated[
        str | None, typer.Option(help="API version to pin; defaults to the newest.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="Print only the secret.")] = False,
) -> None:
    """Create an API key. The secret is printed once and never stored in clear."""
    from keel.api.rest.versions import NEWEST_VERSION, SUPPORTED_VERSIONS

    try:
        parsed = [Scope(s.strip()) for s in scopes.split(",") if s.strip()]
    except ValueError as error:
        raise typer.BadParameter(f"{error}; use {', '.join(s.value for s in Scope)}") from None
    version = api_version or NEWEST_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise typer.BadParameter(f"unknown API version; use one of {', '.join(sorted(SUPPORTED_VERSIONS))}")
    issued = asyncio.run(_issue_key(Settings(), parsed, version, name))
    if quiet:
        typer.echo(issued)
    else:
        typer.echo(
            f"key id:      {issued.split('_')[1]}\nscopes:      {', '.join(parsed)}\n"
            f"api version: {version}\nsecret:      {issued}\n(shown once: store it now)"
        )


async def _issue_key(settings: Settings, scopes: list[Scope], version: str, name: str) -> str:
    from keel.bootstrap import build_keel
    from keel.service.auth import issue_api_key

    keel = await build_keel(settings)
    try:
        issued = await issue_api_key(keel.store, keel.clock, scopes=scopes, api_version=version, name=name)
    finally:
        await keel.close()
    return issued.token


@app.command()
def seed(
    count: Annotated[int, typer.Option(min=1, help="How many demo profiles to create.")] = 100,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed, for repeatable data.")] = 7,
) -> None:
    """Create demo profiles through the service layer (same rules as the API)."""
    asyncio.run(_seed(Settings(), count, seed_value))


async def _seed(settings: Settings, count: int, seed_value: int) -> None:
    from rich.progress import Progress

    from keel.bootstrap import build_keel
    from keel.domain.api_keys import Principal
    from keel.domain.errors import Conflict

    rng = random.Random(seed_value)  # noqa: S311 - demo data, repeatable on purpose
    keel = await build_keel(settings)
    seeder = Principal(key_id="seed", scopes=frozenset({Scope.ADMIN}), api_version="")
    created = skipped = 0
    try:
        with Progress() as progress:
            task = progress.add_task("seeding profiles", total=count)
            for n in range(count):
                tag = f"{rng.getrandbits(40):010x}"
                document: JSONObject = {
                    "handle": f"demo_{tag}",
                    "emails": [
                        {"address": f"demo.{tag}@example.com", "primary": True, "verified": n % 2 == 0}
                    ],
                    "display_name": f"Demo {n}",
                    "locale": rng.choice(["en-GB", "fr-FR", "de-DE", "ja-JP"]),
                    "timezone": rng.choice(["Europe/London", "Europe/Paris", "Asia/Tokyo"]),
                    "links": [{"kind": "website", "url": f"https://example.com/{tag}"}],
                    "attributes": {"plan": rng.choice(["free", "pro"]), "score": rng.randint(0, 100)},
                }
                try:
                    await keel.profiles.create_profile(seeder, document)
                    created += 1
                except Conflict:
                    skipped += 1
                progress.advance(task)
    finally:
        await keel.close()
    typer.echo(f"created {created} profiles ({skipped} skipped as already present)")


def main() -> None:
    app()
