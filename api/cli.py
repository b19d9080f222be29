"""The `kami` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from engine import __version__
from engine.logging import configure as configure_logging
from engine.settings import Settings

app = typer.Typer(
    name="kami",
    help="Kami: issue card keys (卡密), links and top-ups exactly once, durably, fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
pools_app = typer.Typer(help="Redis key pools (rebuilt from PostgreSQL).", no_args_is_help=True)
app.add_typer(pools_app, name="pools")


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit: no traceback for expected failures."""
    typer.echo(f"kami: {message}", err=True)
    raise typer.Exit(code)


def load_settings(*, logs_to_stdout: bool = False, **overrides: Any) -> Settings:
    """Settings from the environment and the command's options. Commands other than
    `serve` log to stderr, so what they print on stdout is only their result."""
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        name = f"KAMI_{field.upper()}" if field else "settings"
        reason = first["msg"].removeprefix("Value error, ")
        fail(f"invalid setting {name}: {reason}", code=2)
    configure_logging(
        settings.log_level, settings.log_format, None if logs_to_stdout else sys.stderr
    )
    return settings


@contextlib.contextmanager
def stores_for(settings: Settings, *, attach: bool = False) -> Iterator[Settings]:
    """Yield settings whose URLs point at running stores, starting the embedded ones
    that are not configured, and stopping them on exit.

    With `attach`, a data dir owned by a running `kami serve` is used through that
    server's embedded stores instead of being refused (for `kami import`, `kami demo`...).
    """
    from engine.bootstrap import ensure_master_key
    from engine.storage.embedded import DataDirInUse, EmbeddedError, EmbeddedStores, attached

    if settings.database_url is not None and settings.redis_url is not None:
        yield settings
        return
    stores = EmbeddedStores(
        Path(settings.data_dir),
        postgres=settings.database_url is None,
        valkey=settings.redis_url is None,
    )
    owned = True
    try:
        stores.start()
    except DataDirInUse as exc:
        running = attached(Path(settings.data_dir)) if attach else None
        if running is None:
            fail(str(exc))
        stores, owned = running, False
    except EmbeddedError as exc:
        fail(str(exc))
    try:
        master_key = settings.master_key
        if master_key is None:
            import base64

            master_key_text = base64.b64encode(ensure_master_key(settings)).decode()
        else:
            master_key_text = master_key.get_secret_value()
        resolved = settings.model_copy(
            update={
                "database_url": settings.database_url or _secret(stores.database_url),
                "redis_url": settings.redis_url or _secret(stores.redis_url),
                "master_key": _secret(master_key_text),
                "sandbox": settings.sandbox_enabled,
            }
        )
        yield resolved
    finally:
        if owned:
            stores.stop()


def _secret(value: str | None) -> Any:
    from pydantic import SecretStr

    return SecretStr(value) if value is not None else None


def _run_bootstrap(settings: Settings, *, seed_demo: bool) -> Any:
    from engine.bootstrap import bootstrap
    from engine.runtime import StoreUnreachable
    from engine.storage.migrate import MigrationError

    try:
        return asyncio.run(bootstrap(settings, seed_demo=seed_demo))
    except (StoreUnreachable, MigrationError) as exc:
        fail(str(exc))


def _export_for_workers(settings: Settings) -> None:
    """Workers are separate processes that build their own Settings from the environment."""
    env = {
        "KAMI_DATABASE_URL": settings.database_url,
        "KAMI_REDIS_URL": settings.redis_url,
        "KAMI_MASTER_KEY": settings.master_key,
    }
    for name, secret in env.items():
        if secret is not None:
            os.environ[name] = secret.get_secret_value()
    os.environ["KAMI_SANDBOX"] = "1" if settings.sandbox_enabled else "0"
    os.environ["KAMI_LOG_LEVEL"] = settings.log_level
    os.environ["KAMI_LOG_FORMAT"] = settings.log_format
    os.environ["KAMI_DATA_DIR"] = str(settings.data_dir)
    os.environ["KAMI_ENVIRONMENT"] = settings.environment.value


def _prepare_metrics_dir(settings: Settings) -> None:
    # Must happen before any worker imports prometheus_client: it picks its storage then.
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = Path(settings.data_dir).resolve() / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


def _banner(settings: Settings, report: Any, *, embedded: bool) -> str:
    base = f"http://{settings.host}:{settings.port}"
    where = f"the embedded default (data in {settings.data_dir})" if embedded else "external stores"
    lines = [
        f"Kami {__version__} is starting on {where}",
        f"  API          {base}",
        f"  Docs         {base}/docs",
        f"  Metrics      {base}/metrics",
        f"  Readiness    {base}/readyz",
        f"  Workers      {settings.workers} ({settings.server})",
    ]
    if report.migrations_applied:
        lines.append(f"  Migrations   applied {', '.join(report.migrations_applied)}")
    if report.generated_admin_token:
        lines.append(f"  Admin token  {report.generated_admin_token}")
        lines.append("               (shown once: keep it; it is stored only as a hash)")
    elif settings.admin_token is None:
        lines.append("  Admin token  printed on first start (or set KAMI_ADMIN_TOKEN)")
    if report.demo_api_key:
        lines.append(f"  Demo API key {report.demo_api_key}")
        lines.append("Issue a demo key:")
        lines.append(
            f"  curl -s -X POST {base}/v1/issuances -H 'Authorization: Bearer "
            f"{report.demo_api_key}' -H 'Idempotency-Key: demo-1' "
            '-H \'Content-Type: application/json\' -d \'{"sku": "DEMO-VIP-MONTH", "quantity": 1}\''
        )
    else:
        lines.append("  Demo API key `kami demo` prints a fresh one")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def _serve(settings: Settings) -> None:
    if settings.server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            "api.app:create_app",
            factory=True,
            interface=Interfaces.ASGI,
            address=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_access=False,
            respawn_failed_workers=True,
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_config=None,
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [KAMI_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [KAMI_PORT].")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes sharing the port [KAMI_WORKERS].")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where embedded stores keep data [KAMI_DATA_DIR].")
    ] = None,
    demo: Annotated[bool, typer.Option(help="Seed the demo on first start.")] = True,
) -> None:
    """Start Kami (embedded PostgreSQL + Valkey unless KAMI_DATABASE_URL/KAMI_REDIS_URL).

    Without the URLs, the embedded servers run under the data dir and stop on exit.
    """
    settings = load_settings(
        logs_to_stdout=True, host=host, port=port, workers=workers, data_dir=data_dir
    )
    embedded = settings.database_url is None or settings.redis_url is None
    _prepare_metrics_dir(settings)
    with stores_for(settings) as resolved:
        report = _run_bootstrap(resolved, seed_demo=demo and embedded)
        typer.echo(_banner(resolved, report, embedded=embedded))
        _export_for_workers(resolved)
        try:
            _serve(resolved)
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            fail(f"cannot serve on {resolved.host}:{resolved.port}: {exc.strerror or exc}")


@db_app.command("migrate")
def db_migrate(
    data_dir: Annotated[Path | None, typer.Option(help="Embedded data dir.")] = None,
) -> None:
    """Apply pending migrations (also done by `kami serve` on start)."""
    settings = load_settings(data_dir=data_dir)
    with stores_for(settings) as resolved:
        report = _run_bootstrap(resolved, seed_demo=False)
    applied = report.migrations_applied
    typer.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


@app.command("demo")
def demo_command(
    data_dir: Annotated[Path | None, typer.Option(help="Embedded data dir.")] = None,
) -> None:
    """Seed the demo if absent and print a fresh API key for the demo agent.

    The demo: product DEMO-VIP-MONTH with 1,000 keys, a level, a funded demo agent.
    """
    from engine.demo import new_demo_api_key

    settings = load_settings(data_dir=data_dir)
    with stores_for(settings, attach=True) as resolved:
        _run_bootstrap(resolved, seed_demo=True)
        assert resolved.database_url is not None
        key = asyncio.run(new_demo_api_key(resolved.database_url.get_secret_value()))
    typer.echo(f"demo API key: {key}")


@app.command("import")
def import_command(
    sku: Annotated[str, typer.Argument(help="The product to add keys to.")],
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="TXT, CSV or XLSX.")
    ],
    batch: Annotated[str, typer.Option(help="Batch name (default: the file name).")] = "",
    expires: Annotated[
        datetime | None, typer.Option(help="When the keys expire (ISO 8601).")
    ] = None,
    unit_cost: Annotated[int, typer.Option(min=0, help="Cost per key in minor units.")] = 0,
    file_format: Annotated[
        str | None, typer.Option("--format", help="txt, csv or xlsx (default: by extension).")
    ] = None,
    column: Annotated[int | None, typer.Option(min=0, help="CSV column (0-based).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded data dir.")] = None,
) -> None:
    """Import a key file (TXT, CSV or XLSX) into a product's inventory.

    Parsed and encrypted as it streams, duplicates skipped, loaded in one transaction
    (all or nothing), then made available in the pool.
    """
    from engine import EngineError
    from engine.errors import DomainError
    from engine.inventory.importer import import_file

    settings = load_settings(data_dir=data_dir)
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    size = file.stat().st_size
    with stores_for(settings, attach=True) as resolved:
        _run_bootstrap(resolved, seed_demo=False)
        assert resolved.database_url is not None
        assert resolved.redis_url is not None
        assert resolved.master_key is not None
        from engine.settings import decode_master_key

        with typer.progressbar(length=size, label=f"importing {file.name}", file=sys.stderr) as bar:
            try:
                report = asyncio.run(
                    import_file(
                        resolved.database_url.get_secret_value(),
                        resolved.redis_url.get_secret_value(),
                        resolved.redis_namespace,
                        decode_master_key(resolved.master_key.get_secret_value()),
                        sku=sku,
                        path=file,
                        name=batch,
                        expires_at=expires,
                        unit_cost=unit_cost,
                        file_format=file_format,
                        column=column,
                        on_read=bar.update,
                    )
                )
            except DomainError as exc:
                fail(f"{exc.code}: {exc.detail}")
            except EngineError as exc:
                fail(
                    f"the batch was saved but the pool could not be loaded ({exc}); "
                    "run `kami pools rebuild` once Redis answers"
                )
    result = report.batch
    typer.echo(
        f"batch {result.batch_id}: {result.accepted} accepted, {result.duplicates} duplicates, "
        f"{result.rejected} rejected"
    )
    for row, reason in report.rejected_rows[:20]:
        typer.echo(f"  row {row}: {reason}")
    if len(report.rejected_rows) > 20:
        typer.echo(f"  … and {len(report.rejected_rows) - 20} more rejected rows")


@pools_app.command("rebuild")
def pools_rebuild(
    sku: Annotated[str | None, typer.Argument(help="One SKU; all products when omitted.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded data dir.")] = None,
) -> None:
    """Rebuild pools from PostgreSQL, the source of truth (after Redis was lost or replaced).

    Run it while no issuance is in flight for the SKU: entries taken but not yet committed
    would be offered again (the commit guard still refuses a second issue of any key)."""
    from engine.inventory.pools import rebuild_all

    settings = load_settings(data_dir=data_dir)
    with stores_for(settings, attach=True) as resolved:
        _run_bootstrap(resolved, seed_demo=False)
        try:
            counts = asyncio.run(rebuild_all(resolved, sku))
        except Exception as exc:
            fail(f"rebuild failed: {type(exc).__name__}: {exc}")
    if not counts:
        fail(f"no product {sku}" if sku else "no products", code=1)
    for name, count in counts.items():
        typer.echo(f"{name}: {count} available")


@app.command()
def version() -> None:
    """Print Kami's version."""
    typer.echo(f"kami {__version__} (python {sys.version.split()[0]})")


def main() -> None:
    app()
