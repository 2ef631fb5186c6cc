"""The `keel` command."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from keel.config import Settings, redacted_text
from keel.domain.api_keys import ApiKey, Scope
from keel.domain.profile import JSONObject

if TYPE_CHECKING:
    from keel.bootstrap.container import Services
    from keel.storage.residency_audit import ForeignRows

app = typer.Typer(help="Keel: user profiles as a service.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
events_app = typer.Typer(help="The change events (docs/events.md).", no_args_is_help=True)
app.add_typer(events_app, name="events")
layout_app = typer.Typer(help="The profiles' storage layout (docs/layouts.md).", no_args_is_help=True)
app.add_typer(layout_app, name="layout")
webhooks_app = typer.Typer(
    help="Webhook endpoints' stored secrets (docs/events.md#webhooks).", no_args_is_help=True
)
app.add_typer(webhooks_app, name="webhooks")
ratelimit_app = typer.Typer(help="The fleet-wide rate-limit kill switch (on Redis).", no_args_is_help=True)
app.add_typer(ratelimit_app, name="ratelimit")
residency_app = typer.Typer(help="Regional data residency (docs/residency.md).", no_args_is_help=True)
app.add_typer(residency_app, name="residency")
capacity_app = typer.Typer(
    help="Measure a deployment's capacity and plan a fleet (docs/capacity.md).", no_args_is_help=True
)
app.add_typer(capacity_app, name="capacity")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema to the newest revision."""
    from keel.storage.layouts import LayoutMismatch
    from keel.storage.migrations.runner import migrate as run_migrations

    settings = Settings()
    try:
        run_migrations(settings.database_url, layout=settings.storage_layout)
    except LayoutMismatch as error:
        typer.echo(f"keel: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"migrated {settings.redacted_database_url()}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Defaults to KEEL_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Defaults to KEEL_PORT.")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="Also serve gRPC on this port (KEEL_GRPC_PORT); 0: any free port.")
    ] = None,
    grpc_only: Annotated[bool, typer.Option(help="Serve gRPC alone, without HTTP.")] = False,
    core: Annotated[
        str | None,
        typer.Option(help="grpc://host:port of a core (KEEL_CORE_URL): serve REST/GraphQL as its edge."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="HTTP worker processes on the one port (KEEL_WORKERS); 0: one per core when"
            " KEEL_REDIS_URL is set, else one.",
            min=0,
        ),
    ] = None,
) -> None:
    """Serve the REST API with uvicorn (uvloop, httptools): one process, or --workers processes
    on the one port under uvicorn's supervisor; gRPC beside it or alone; or, with --core, an
    edge whose every operation runs on a remote core."""
    overrides: dict[str, object] = {}
    if grpc_port is not None:
        overrides["grpc_port"] = grpc_port
    if core is not None:
        overrides["core_url"] = core
    if workers is not None:
        overrides["workers"] = workers
    from keel.bootstrap.core import SchemaNotCurrent
    from keel.bootstrap.lifecycle import preflight
    from keel.bootstrap.workers import worker_count
    from keel.storage.layouts import LayoutMismatch

    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        if grpc_only and settings.grpc_port is None:
            raise ValueError("--grpc-only needs a gRPC port (--grpc-port or KEEL_GRPC_PORT)")
        if settings.grpc_port is not None and settings.core_url is not None:
            raise ValueError("an edge (--core) does not serve gRPC; its core does")
        count = 1 if grpc_only else worker_count(settings)  # --grpc-only: one process of gRPC
        asyncio.run(preflight(settings))
    except (SchemaNotCurrent, LayoutMismatch, ValueError, OSError) as error:
        # A clear sentence instead of a traceback from inside the server's start-up.
        typer.echo(f"keel: cannot start: {error}", err=True)
        raise typer.Exit(1) from None
    if grpc_only:
        _serve_grpc_only(settings)
    elif count > 1:
        _serve_workers(settings, count, overrides, host=host or settings.host, port=port or settings.port)
    else:
        _serve_one(settings, host=host or settings.host, port=port or settings.port)


def _serve_one(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    from keel.api.http.serving import http_protocol
    from keel.bootstrap.lifecycle import create_app

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        **_uvicorn_options(settings),
        # httptools, with header and body limits and timeouts uvicorn does not have.
        http=http_protocol(settings),
    )


def _serve_workers(
    settings: Settings, count: int, overrides: dict[str, object], *, host: str, port: int
) -> None:
    """uvicorn's supervisor over `count` spawned workers (keel.bootstrap.workers): each builds its
    application and protocol from the environment, completed here first."""
    import os

    import uvicorn

    from keel.bootstrap.workers import WORKER_APP, WORKER_HTTP_PROTOCOL, supervise, worker_environment
    from keel.observability.logging import configure_logging

    configure_logging(settings.log_level)  # the supervisor's own lines (workers started, replaced)
    os.environ.update(worker_environment(count, overrides))
    supervise(
        uvicorn.Config(
            WORKER_APP,
            factory=True,
            workers=count,
            host=host,
            port=port,
            **_uvicorn_options(settings),
            http=WORKER_HTTP_PROTOCOL,
        )
    )


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What one process and a supervisor's workers run with alike."""
    return dict(
        loop="uvloop",
        timeout_keep_alive=settings.http_keep_alive_seconds,
        # On SIGTERM: refuse new connections, give the requests in flight this long.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        access_log=False,  # Keel writes its own access log, with request and trace ids
        # Keel reads X-Forwarded-For itself, through KEEL_TRUSTED_PROXY_HOPS only; uvicorn's
        # default would rewrite the client address from it for any loopback peer.
        proxy_headers=False,
        log_config=None,
        server_header=False,
    )


def _serve_grpc_only(settings: Settings) -> None:
    import signal

    import uvloop
    from prometheus_client import start_http_server

    from keel.bootstrap.lifecycle import running
    from keel.observability.logging import configure_logging
    from keel.observability.metrics import Metrics

    configure_logging(settings.log_level)
    metrics = Metrics()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running(settings, metrics):
            if settings.api_port_metrics:
                # No HTTP API, but the metrics still need a scraper's endpoint: on KEEL_PORT (in
                # production, only on KEEL_MANAGEMENT_PORT when that is set; see `running`).
                start_http_server(settings.port, addr=settings.host, registry=metrics.registry)
            await stop.wait()

    uvloop.run(main())


@keys_app.command("create")
def keys_create(
    scopes: Annotated[
        str,
        typer.Option(
            help="Comma-separated: profiles:read, profiles:write, admin, edge (an edge deployment's key)."
        ),
    ] = "profiles:read,profiles:write",
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "default",
    api_version: Annotated[
        str | None, typer.Option(help="API version to pin; defaults to the newest.")
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option(
            help="Rate-limit plan; defaults to `edge` for edge keys, else KEEL_RATELIMIT_DEFAULT_PLAN."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="Print only the secret.")] = False,
) -> None:
    """Create an API key. The secret is printed once and never stored in clear."""
    from keel.api.rest.api_versions import NEWEST_VERSION, SUPPORTED_VERSIONS
    from keel.bootstrap.protection import build_rate_limit_catalog

    try:
        settings = Settings()
        plans = build_rate_limit_catalog(settings).plans
    except ValueError as error:  # the configuration (settings, plans): a sentence, not a traceback
        typer.echo(f"keel: bad configuration: {error}", err=True)
        raise typer.Exit(1) from None
    try:
        parsed = [Scope(s.strip()) for s in scopes.split(",") if s.strip()]
    except ValueError as error:
        raise typer.BadParameter(f"{error}; use {', '.join(s.value for s in Scope)}") from None
    if plan is None:
        # An edge's calls for all its callers are charged to its own key: its own plan.
        plan = "edge" if Scope.EDGE in parsed and "edge" in plans else settings.ratelimit_default_plan
    if plan not in plans:
        raise typer.BadParameter(f"unknown plan; configured plans: {', '.join(plans)}")
    version = api_version or NEWEST_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise typer.BadParameter(f"unknown API version; use one of {', '.join(sorted(SUPPORTED_VERSIONS))}")
    issued = asyncio.run(_issue_key(settings, parsed, version, name, plan))
    if quiet:
        typer.echo(issued)
    else:
        typer.echo(
            f"key id:      {issued.split('_')[1]}\nscopes:      {', '.join(parsed)}\n"
            f"api version: {version}\nplan:        {plan}\nsecret:      {issued}\n(shown once: store it now)"
        )


async def _issue_key(settings: Settings, scopes: list[Scope], version: str, name: str, plan: str) -> str:
    from keel.service.api_key_admin import CLI_ACTOR, created_entry
    from keel.service.auth import issue_api_key

    async with _keel(settings) as keel:
        now = keel.local.clock.now()
        issued = await issue_api_key(
            keel.local.store,
            keel.local.clock,
            scopes=scopes,
            api_version=version,
            name=name,
            plan=plan,
            event_source=settings.events_source,
            audit=lambda key: created_entry(now, CLI_ACTOR, key),  # recorded, as the API's are
        )
    return issued.token


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (ids, names, scopes, pinned versions; never secrets)."""
    from keel.service.auth import list_api_keys

    async def run() -> list[ApiKey]:
        async with _keel(Settings()) as keel:
            return await list_api_keys(keel.local.store)

    for key in asyncio.run(run()):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        scopes = ",".join(sorted(key.scopes))
        typer.echo(f"{key.id}  {key.name:<16} {scopes:<32} {key.api_version}  {key.plan:<10} {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (the part after `keel_`).")]) -> None:
    """Revoke an API key. With KEEL_REDIS_URL, running servers are told at once; else (or when
    Redis cannot be reached) they stop accepting it within KEEL_API_KEY_CACHE_SECONDS."""
    from keel.service.api_key_admin import CLI_ACTOR, revoked_entry
    from keel.service.auth import revoke_api_key

    async def run() -> tuple[bool, int | None]:
        settings = Settings()
        async with _keel(settings) as keel:
            revoked = await revoke_api_key(
                keel.local.store,
                keel.local.clock,
                key_id,
                event_source=settings.events_source,
                audit=lambda at: revoked_entry(at, CLI_ACTOR, key_id),
            )
            told = None
            if revoked and keel.key_revocations is not None:
                told = await keel.key_revocations.publish(key_id)
            return revoked, told

    revoked, told = asyncio.run(run())
    if not revoked:
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    if told:
        typer.echo(f"revoked {key_id}; running servers were told ({told} processes listening)")
    elif told == 0:
        typer.echo(
            f"revoked {key_id}; no running server listens on Redis now (none is running, or they"
            " stop accepting it within KEEL_API_KEY_CACHE_SECONDS)"
        )
    else:
        typer.echo(
            f"revoked {key_id}; running servers stop accepting it within KEEL_API_KEY_CACHE_SECONDS"
            " (not pushed: no KEEL_REDIS_URL, or Redis did not answer)"
        )


@webhooks_app.command("reseal")
def webhooks_reseal() -> None:
    """Seal every webhook signing secret again with KEEL_WEBHOOK_SECRETS_KEY, opening the old ones
    with KEEL_WEBHOOK_SECRETS_KEY_FALLBACKS: the last step of a key rotation, after which the old
    key can leave the fallbacks. Receivers notice nothing (the secrets do not change). Exits 1 when
    some secret opens with no configured key (those endpoints must be registered again)."""

    async def run() -> Resealed:
        async with _keel(Settings()) as keel:
            admin = keel.webhooks
            if admin is None:
                raise RuntimeError("this process serves no webhooks")
            return await admin.reseal_secrets()

    from keel.service.webhooks import Resealed

    done = asyncio.run(run())
    typer.echo(
        f"resealed {len(done.resealed)}, already current {len(done.current)},"
        f" unreadable {len(done.unreadable)}"
    )
    for endpoint_id in done.unreadable:
        typer.echo(f"unreadable with every configured key: {endpoint_id}", err=True)
    if done.unreadable:
        raise typer.Exit(1)


@events_app.command("tail")
def events_tail(
    from_seq: Annotated[
        int, typer.Option("--from", min=0, help="First sequence number to print (stream or outbox).")
    ] = 0,
) -> None:
    """Print the events as JSON lines, `{"seq": ..., "event": {CloudEvent}}`: from the JetStream
    stream when KEEL_NATS_URL is set, else from the outbox table (what is still kept there)."""
    import json

    settings = Settings()

    async def from_stream(url: str) -> None:
        from keel.events.jetstream import read_stream

        async for message in read_stream(url, settings.events_stream, from_seq):
            line = {"seq": message.seq, "event": json.loads(message.data)}
            typer.echo(json.dumps(line, separators=(",", ":")))

    async def from_outbox() -> None:
        from keel.service.outbox import cloud_event

        async with _keel(settings) as keel:
            seq = from_seq
            while True:
                async with keel.local.store.unit_of_work(read_only=True) as uow:
                    records = await uow.outbox.read_from(seq, 1000)
                for record in records:
                    line = {"seq": record.seq, "event": cloud_event(record)}
                    typer.echo(json.dumps(line, separators=(",", ":")))
                if len(records) < 1000:
                    return
                seq = records[-1].seq + 1

    asyncio.run(from_stream(settings.nats_url) if settings.nats_url else from_outbox())


@layout_app.command("status")
def layout_status() -> None:
    """Print the layout record: where profiles are read and written, the migration's phase and
    progress, and the serving nodes' acknowledgements."""
    from keel.bootstrap.layout import with_migrator
    from keel.storage.layout_migration import LayoutMigrator
    from keel.storage.layouts import LayoutMismatch

    settings = Settings()

    async def status(migrator: LayoutMigrator) -> list[str]:
        record = await migrator.recorded()
        if record is None:
            return []
        first, mirror = record.writes_to()
        lines = [
            f"read layout: {record.read_layout}",
            f"phase: {record.phase}",
            f"target layout: {record.target_layout or '-'}",
            f"generation: {record.generation}",
            f"reads: {record.reads_from()}; writes: {first}{f' and {mirror}' if mirror else ''}",
        ]
        progress = await migrator.progress()
        if progress is not None:
            lines.append(
                f"progress ({progress.phase}): {progress.done}/{progress.total} profiles,"
                f" {progress.mended} mended, last id {progress.after_id or '-'}"
            )
        counts = await migrator.counts()
        lines.append("stored: " + ", ".join(f"{layout} {count}" for layout, count in counts.items()))
        lines.extend(
            f"node {node.node_id}: generation {node.generation}, seen {node.seconds_ago:.1f} s ago"
            for node in await migrator.nodes()
        )
        return lines

    try:
        lines = asyncio.run(with_migrator(settings, status, exclusive=False))
    except LayoutMismatch as error:
        typer.echo(f"keel: {error}", err=True)
        raise typer.Exit(1) from None
    if not lines:
        typer.echo(
            f"keel: {settings.redacted_database_url()} records no layout; run `keel migrate`", err=True
        )
        raise typer.Exit(1)
    for line in lines:
        typer.echo(line)
    typer.echo(f"this node (KEEL_STORAGE_LAYOUT): {settings.storage_layout}")


@layout_app.command("migrate")
def layout_migrate(
    to: Annotated[str, typer.Option("--to", help="normalized or document")],
    rows_per_second: Annotated[
        float | None,
        typer.Option(
            min=1.0, help="Budget of the backfill and the verify (rows/s); none: as fast as it goes."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Profiles per transaction.")] = 500,
    until: Annotated[
        str | None, typer.Option(help="Stop once this phase is reached (e.g. switched); none: finish.")
    ] = None,
) -> None:
    """Move the profiles to another layout online: dual-write, backfill, verify, switch, finish.
    Resumes where a stopped or killed run left off (docs/layouts.md)."""
    from keel.storage.layouts import Layout, Phase

    target, stop = _choice(Layout, to, "--to"), _choice(Phase, until, "--until") if until else None
    if stop is Phase.STEADY:
        raise typer.BadParameter("a phase of the migration (steady is where it ends)", param_hint="--until")
    drawer = _ProgressDrawer()
    _run_layout(
        lambda migrator: migrator.migrate(target, until=stop),
        batch=batch,
        rows_per_second=rows_per_second,
        report=drawer,
        done=lambda record: f"layout: {record.phase}, reads from {record.reads_from()}",
    )


@layout_app.command("rollback")
def layout_rollback() -> None:
    """Undo the migration under way (reads back first, then writes); after a finish, migrate back."""
    _run_layout(
        lambda migrator: migrator.rollback(),
        report=_ProgressDrawer(),
        done=lambda record: f"layout: {record.phase}, reads from {record.reads_from()}",
    )


@layout_app.command("drop")
def layout_drop(
    layout: Annotated[
        str, typer.Option("--layout", help="The layout no longer used, named as confirmation.")
    ],
) -> None:
    """Delete every profile row of a layout that is neither read nor written (after a finish)."""
    from keel.storage.layouts import Layout

    chosen = _choice(Layout, layout, "--layout")
    _run_layout(
        lambda migrator: migrator.drop(chosen), done=lambda count: f"dropped {count} profiles of {chosen}"
    )


def _choice(kind: Any, value: str, option: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise typer.BadParameter(f"one of {', '.join(k.value for k in kind)}", param_hint=option) from None


def _run_layout(
    work: Any, *, done: Any, batch: int = 500, rows_per_second: float | None = None, report: Any = None
) -> None:
    from keel.bootstrap.layout import with_migrator
    from keel.domain.errors import KeelError
    from keel.storage.layout_migration import MigrationRefused, NodesBehind, VerificationFailed
    from keel.storage.layout_records import RecordChanged
    from keel.storage.layouts import LayoutMismatch
    from keel.storage.migrator_lock import MigratorBusy

    settings = Settings()
    try:
        result = asyncio.run(
            with_migrator(
                settings,
                work,
                batch=batch,
                rows_per_second=rows_per_second,
                report=report or (lambda _: None),
            )
        )
    except (
        LayoutMismatch,
        MigrationRefused,
        NodesBehind,
        VerificationFailed,
        RecordChanged,
        MigratorBusy,
        KeelError,  # the database unreachable, a conflict that outlasted the retries
        TimeoutError,
    ) as error:
        typer.echo(f"keel: {error}; nothing past the last step reported was lost, run it again", err=True)
        raise typer.Exit(1) from None
    typer.echo(done(result))


class _ProgressDrawer:
    """The migrator's reports on the terminal: one line per phase and note, and a progress bar
    with rate and ETA (redrawn in place on a terminal, a line every 2 s otherwise)."""

    def __init__(self) -> None:
        import time

        self._clock = time.monotonic
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, report: Any) -> None:
        progress = report.progress
        if report.note is not None or progress is None:
            self._end_bar()
            typer.echo(report.note or f"phase {report.record.phase}", err=True)
            return
        now = self._clock()
        finished = progress.done >= progress.total
        if not finished and now - self._last < (0.2 if self._tty else 2.0):
            return
        self._last = now
        total = max(progress.total, 1)
        filled = int(30 * min(progress.done, total) / total)
        rate = report.rows_per_second
        eta = f"ETA {max(progress.total - progress.done, 0) / rate:.0f} s" if rate else "ETA -"
        line = (
            f"{progress.phase:<8} [{'#' * filled}{'.' * (30 - filled)}] {progress.done}/{progress.total}"
            f" {100 * progress.done / total:.0f}% {f'{rate:.0f} rows/s' if rate else ''} {eta}"
            f"{f' mended {progress.mended}' if progress.mended else ''}"
        )
        if self._tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        else:
            typer.echo(line, err=True)

    def _end_bar(self) -> None:
        if self._tty and self._last:
            sys.stderr.write("\n")
            self._last = 0.0


@residency_app.command("audit")
def residency_audit(
    store: Annotated[
        list[str] | None,
        typer.Option(
            "--store",
            help="REGION=DATABASE_URL or REGION=env:VARIABLE (keeps a password out of the process "
            "list), once per region; absent: KEEL_REGION's KEEL_DATABASE_URL.",
        ),
    ] = None,
) -> None:
    """Report any row of another region's profile in each region's database (expected: none).
    Every store is audited; exits 2 when one could not be read, else 1 when something was
    found, else 0."""
    from keel.bootstrap.layout import MIGRATOR_COMMAND_TIMEOUT_S

    settings = Settings()
    stores = [_audited_store(entry, settings) for entry in store or []] or [(settings.region, settings)]
    found_any = unreadable = False
    for region, chosen in stores:
        # Whole-table scans: a bound of minutes, as the layout commands have, not a request's.
        chosen = chosen.model_copy(update={"db_command_timeout_seconds": MIGRATOR_COMMAND_TIMEOUT_S})
        where = f"region {region} ({chosen.redacted_database_url()})"
        try:
            found = asyncio.run(_foreign_rows(chosen, region))
        except Exception as error:  # noqa: BLE001 - any failure to read a store is reported, not a traceback
            message = redacted_text(str(error), chosen.database_url)
            typer.echo(f"keel: {where}: could not be read: {type(error).__name__}: {message}", err=True)
            unreadable = True
            continue
        if not found:
            typer.echo(f"{where}: nothing of another region")
            continue
        found_any = True
        for rows in found:
            shown = ", ".join(f"{value} ({home})" for value, home in rows.sample)
            typer.echo(
                f"{where}: {rows.table}.{rows.column}: {rows.count} rows of other regions, e.g. {shown}"
            )
    if unreadable:
        raise typer.Exit(2)
    if found_any:
        raise typer.Exit(1)


def _audited_store(entry: str, settings: Settings) -> tuple[str, Settings]:
    """`REGION=URL` or `REGION=env:VARIABLE` as the region and the settings to open its store
    with; a usage error (exit 2) for anything else, before any store is touched (a mistyped
    SQLite path is not created)."""
    from keel.domain.ids import REGION_PATTERN

    region, equals, url = entry.partition("=")
    if url.startswith("env:"):
        url = os.environ.get(url.removeprefix("env:"), "")
    if not equals or not REGION_PATTERN.fullmatch(region) or not url:
        raise typer.BadParameter(f"{entry!r}: REGION=DATABASE_URL or REGION=env:VARIABLE")
    if url.startswith("sqlite:///"):
        if not Path(url.removeprefix("sqlite:///")).is_file():
            raise typer.BadParameter(f"{region}: no SQLite database at {url.removeprefix('sqlite:///')}")
    elif not url.startswith(("postgresql://", "postgres://")):
        raise typer.BadParameter(f"{region}: a sqlite:/// or postgresql:// URL")
    return region, settings.model_copy(update={"database_url": url, "region": region})


async def _foreign_rows(settings: Settings, region: str) -> list[ForeignRows]:
    from keel.bootstrap.core import operator_store

    async with operator_store(settings) as opened, opened.unit_of_work(read_only=True) as uow:
        return await uow.residency.foreign_rows(region)


@ratelimit_app.command("off")
def ratelimit_off() -> None:
    """Admit every request on every Keel sharing KEEL_REDIS_URL, at once, until `on`."""
    asyncio.run(_set_switch(Settings(), enabled=False))
    typer.echo("rate limits off (fleet-wide); `keel ratelimit on` restores them")


@ratelimit_app.command("on")
def ratelimit_on() -> None:
    """Enforce rate limits again on every Keel sharing KEEL_REDIS_URL."""
    asyncio.run(_set_switch(Settings(), enabled=True))
    typer.echo("rate limits on")


async def _set_switch(settings: Settings, *, enabled: bool) -> None:
    from keel.ratelimit.redis import RedisRateLimiter, connect

    if settings.redis_url is None:
        typer.echo(
            "keel: KEEL_REDIS_URL is not set; without Redis, use KEEL_RATELIMIT_ENABLED=false and restart",
            err=True,
        )
        raise typer.Exit(1)
    limiter = RedisRateLimiter(connect(settings.redis_url), timeout_seconds=2.0)
    try:
        await limiter.set_switch(enabled)
    finally:
        await limiter.close()


@asynccontextmanager
async def _keel(settings: Settings) -> AsyncIterator[Services]:
    """A core over the configured database: operator commands act on the database itself, even
    where KEEL_CORE_URL makes `keel serve` an edge."""
    from keel.bootstrap.lifecycle import build_services

    keel = await build_services(settings.model_copy(update={"core_url": None, "core_api_key": None}))
    try:
        yield keel
    finally:
        await keel.close()


@app.command()
def seed(
    count: Annotated[int, typer.Option(min=1, help="How many demo profiles to create.")] = 100,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed, for repeatable data.")] = 7,
) -> None:
    """Create demo profiles through the service layer (same rules as the API)."""
    asyncio.run(_seed(Settings(), count, seed_value))


async def _seed(settings: Settings, count: int, seed_value: int) -> None:
    from rich.progress import Progress

    from keel.domain.api_keys import Principal
    from keel.domain.errors import Conflict

    rng = random.Random(seed_value)  # noqa: S311 - demo data, repeatable on purpose
    seeder = Principal(key_id="seed", scopes=frozenset({Scope.ADMIN}), api_version="")
    created = skipped = 0
    async with _keel(settings) as keel:
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
    typer.echo(f"created {created} profiles ({skipped} skipped as already present)")


@capacity_app.command("measure")
def capacity_measure(
    url: Annotated[
        list[str] | None,
        typer.Option(
            help="N=URL: a running deployment of N workers or nodes (repeat for several N);"
            " a bare URL is N=1."
        ),
    ] = None,
    start_workers: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated N: start `keel serve --workers N` here for each, with this"
            " environment's settings."
        ),
    ] = None,
    unit: Annotated[str, typer.Option(help="What N counts: workers or nodes.")] = "workers",
    key_env: Annotated[
        str, typer.Option(help="The environment variable holding the API key (profiles:read,profiles:write).")
    ] = "KEEL_CAPACITY_KEY",
    start_rps: Annotated[float, typer.Option(min=1)] = 50,
    step_rps: Annotated[float, typer.Option(min=1)] = 50,
    max_rps: Annotated[float, typer.Option(min=1)] = 2000,
    step_seconds: Annotated[float, typer.Option(min=0.5)] = 5,
    p99_slo_ms: Annotated[float, typer.Option(help="The knee's latency SLO.")] = 50,
    read_share: Annotated[float, typer.Option(min=0, max=1, help="Reads in the mix.")] = 0.9,
    kinds: Annotated[str, typer.Option(help="Comma-separated: read, write, mix.")] = "read,write,mix",
    connections: Annotated[int, typer.Option(min=1)] = 64,
    profiles: Annotated[
        int, typer.Option(min=1, help="Profiles made for the measurement, deleted after it.")
    ] = 100,
    redis_url_env: Annotated[
        str | None,
        typer.Option(help="An environment variable holding a Redis URL whose commands to count per request."),
    ] = None,
    report: Annotated[
        Path, typer.Option(help="Base path of the report: BASE.json, BASE.md, BASE-*.svg.")
    ] = Path("capacity"),
) -> None:
    """An open-loop step ramp of reads, writes and a mix against each deployment; the knee of each
    (highest throughput within the p99 SLO), the USL fitted over N, and a report with plots."""
    import math
    import signal

    from rich.progress import Progress

    from keel.capacity.load import Target
    from keel.capacity.measure import KINDS, MeasurementCut, Ramp, Series, counted, measure

    def _terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds like Ctrl-C: the servers it started are stopped

    signal.signal(signal.SIGTERM, _terminated)
    from keel.capacity.report import write_report
    from keel.capacity.steps import Step

    token = os.environ.get(key_env, "")
    chosen_kinds = tuple(kind.strip() for kind in kinds.split(",") if kind.strip())
    targets: dict[int, str] = {}
    for entry in url or []:
        scale, sep, where = entry.partition("=")
        if not sep:
            scale, where = "1", entry
        if not scale.isdigit() or int(scale) < 1:
            _fail(f"--url {entry!r}: N=URL with N >= 1")
        try:
            Target.parse(where, token)  # every URL checked before minutes of ramps
        except ValueError as error:
            _fail(f"--url {entry!r}: {error}")
        if int(scale) in targets:
            _fail(f"--url {entry!r}: N={scale} given twice")
        targets[int(scale)] = where
    given = [n.strip() for n in (start_workers or "").split(",") if n.strip()]
    if not all(n.isdigit() for n in given):
        _fail(f"--start-workers {start_workers!r}: comma-separated whole numbers")
    workers = [int(n) for n in given]
    problems = [
        f"{key_env} holds no API key" if not token else "",
        "give --url or --start-workers" if not targets and not workers else "",
        f"--kinds: one or more of {', '.join(KINDS)}"
        if not chosen_kinds or set(chosen_kinds) - set(KINDS)
        else "",
        "--unit: workers or nodes" if unit not in ("workers", "nodes") else "",
        "--start-workers starts workers: --unit workers" if workers and unit != "workers" else "",
        "--max-rps is below --start-rps" if max_rps < start_rps else "",
        "--start-workers: each N at least 1, none given twice"
        if any(n < 1 for n in workers) or len(set(workers) | set(targets)) != len(workers) + len(targets)
        else "",
        "--p99-slo-ms must be positive and finite" if not 0 < p99_slo_ms < math.inf else "",
        "--start-rps, --step-rps, --max-rps, --step-seconds and --read-share must be finite"
        if not all(math.isfinite(v) for v in (start_rps, step_rps, max_rps, step_seconds, read_share))
        else "",
    ]
    if any(problems):
        _fail("; ".join(problem for problem in problems if problem))
    redis_url = os.environ.get(redis_url_env) if redis_url_env else None
    if redis_url_env and not redis_url:
        _fail(f"{redis_url_env} holds no Redis URL")
    ramp = Ramp(
        start_rps=start_rps,
        step_rps=step_rps,
        max_rps=max_rps,
        step_seconds=step_seconds,
        p99_slo_ms=p99_slo_ms,
        read_share=read_share,
        kinds=chosen_kinds,
        connections=connections,
        profiles=profiles,
    )
    total = len(ramp.rates()) * len(chosen_kinds) * (len(targets) + len(workers))
    with Progress(transient=False) as progress:
        task = progress.add_task("ramping", total=total)

        def on_step(series: Series, step: Step) -> None:
            verdict = "ok" if step.within(p99_slo_ms) else "past SLO"
            failed = " ".join(f"{what}×{count}" for what, count in step.failures.items()) or "0"
            progress.console.print(
                f"{counted(series.scale, unit)} {series.kind} {step.offered_rps:,.0f}/s:"
                f" {step.throughput:,.0f}/s p99 {step.p99_ms:.1f} ms failed {failed} {verdict}",
                soft_wrap=True,
            )
            progress.advance(task)

        try:
            measurement = measure(
                token,
                ramp,
                unit=unit,
                targets=targets,
                start_workers=workers,
                redis_url=redis_url,
                on_step=on_step,
            )
        except MeasurementCut as cut:
            cause = f"{type(cut.cause).__name__}: {redacted_text(str(cut.cause), redis_url or '')}"
            if cut.partial.series:  # what was measured before the failure is kept, marked partial
                for path in write_report(cut.partial, report, _command_line(), partial=cause):
                    typer.echo(f"wrote {path} (partial)")
            _fail(cause)
        progress.update(task, completed=total)
    for path in write_report(measurement, report, _command_line()):
        typer.echo(f"wrote {path}")


def _command_line() -> str:
    return "keel capacity " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "keel capacity measure"


@capacity_app.command("plan")
def capacity_plan(
    measurement: Annotated[
        Path, typer.Argument(help="A measurement's JSON (keel capacity measure --report).")
    ],
    peak_rps: Annotated[float, typer.Option(help="The peak to serve, requests/s.")],
    read_share: Annotated[float, typer.Option(min=0, max=1, help="Reads among the requests.")] = 0.9,
    p99_slo_ms: Annotated[float, typer.Option(help="p99 latency to hold at the peak.")] = 50,
    headroom: Annotated[float, typer.Option(min=0, help="0.3: plan for 30 % above the peak.")] = 0.3,
    spare_nodes: Annotated[
        int, typer.Option(min=0, help="Nodes beyond the need, for failures and deploys.")
    ] = 1,
    reserved_connections: Annotated[
        int, typer.Option(min=0, help="Database connections kept for migrations, the relay and operators.")
    ] = 10,
    workers_per_node: Annotated[
        int | None,
        typer.Option(
            min=1, help="Run this many workers a node (HAProxy's agent check needs 1); default: the best."
        ),
    ] = None,
) -> None:
    """Nodes, workers per node, database pool and max connections, Redis operations/s for a peak,
    from a measurement, with the arithmetic shown."""
    from keel.capacity.measure import counted, load_measurement
    from keel.capacity.plan import Need, plan

    try:
        measured = load_measurement(str(measurement))
        need = Need(
            peak_rps, read_share, p99_slo_ms, headroom, spare_nodes, reserved_connections, workers_per_node
        )
        result = plan(measured, need)
    except (OSError, ValueError, KeyError, TypeError) as error:
        _fail(f"{measurement}: {error}")
    for line in result.lines:
        typer.echo(line)
    if result.nodes is None:
        raise typer.Exit(1)
    typer.echo(
        f"\nPlan: {result.nodes} nodes × {counted(result.workers_per_node, 'workers')};"
        f" pool {result.pool_per_worker} a worker;"
        f" max_connections {result.max_connections}"
        + (f"; Redis {result.redis_ops:,.0f} ops/s" if result.redis_ops is not None else "")
    )


def _fail(message: str) -> NoReturn:
    typer.echo(f"keel: {message}", err=True)
    raise typer.Exit(2)


def main() -> None:
    app()
