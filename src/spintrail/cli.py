"""The ``spintrail`` command: serve, search, import, simulate (and more, each a sub-command)."""

from __future__ import annotations

import enum
import functools
import gc
import inspect
import logging
import os
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from spintrail import __version__, private
from spintrail.output import Format, emit
from spintrail.query import FILTER_HELP, FILTER_NAMES, FilterError, Filters, parse_limit
from spintrail.record import API_FIELDS
from spintrail.settings import Settings, load_settings
from spintrail.store import (
    PreparedEvent,
    Store,
    StoreError,
    StoreMissing,
    StoreNeedsMigration,
    open_store,
)

app = typer.Typer(
    name="spintrail",
    help="spintrail: the audit trail for Spinnaker. Receives echo events, keeps them, answers who did what.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML config file with settings (also SPINTRAIL_CONFIG).", show_default=False
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database", help="SQLite path or postgresql:// URL (default ./spintrail.db; SPINTRAIL_DATABASE)."
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]

TABLE_COLUMNS = ("id", "time", "user", "application", "type", "status", "accounts", "description")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error that says what to do next, and exit."""
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def settings_from(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from flags, environment and config file, with errors a user can act on."""
    if config is not None:
        os.environ["SPINTRAIL_CONFIG"] = str(config)
    try:
        return load_settings(**overrides)
    except ValueError as exc:
        raise fail(f"invalid settings: {exc}") from None


def open_store_or_exit(settings: Settings, *, read_only: bool = False, wait: bool = False) -> Store:
    """The store of ``settings``, or exit naming the problem. ``read_only`` for commands that only examine
    it (exit 2 when it is missing or needs a schema upgrade first). With ``wait`` (``serve``), a database
    that cannot be reached is waited for, retrying every 2 s and saying so once per interval, instead of
    exiting: a replica started during an outage comes up with the database rather than being restarted in
    a loop."""
    import time

    from spintrail import dbutil

    waiting = dbutil.Throttled(logging.getLogger("spintrail"), "opening the store")
    while True:
        try:
            store = open_store(
                settings.database,
                batch_max=settings.commit_batch_max,
                queue_max=settings.write_queue_max,
                pool_size=settings.postgres_pool_size,
                read_only=read_only,
            )
        except (StoreNeedsMigration, StoreMissing) as exc:
            raise fail(f"{exc}", 2) from None
        except StoreError as exc:
            if not (wait and dbutil.is_unreachable(exc)):
                raise fail(f"{exc}") from None
            waiting.failed(exc)
            time.sleep(2)
            continue
        waiting.succeeded()
        return store


def with_filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add one ``--<filter>`` option per query filter (the API's names) and pass ``filters=`` to ``fn``."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in sig.parameters.values()
        if p.name != "filters"
    ]
    for name in FILTER_NAMES:
        flag = "--" + name.replace("_", "-")
        if name in ("q", "since", "until"):
            annotation: Any = Annotated[str | None, typer.Option(flag, help=FILTER_HELP[name])]
        else:
            annotation = Annotated[
                list[str] | None, typer.Option(flag, help=FILTER_HELP[name] + " (repeatable)")
            ]
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        )

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        raw = {name: kwargs.pop(name, None) for name in FILTER_NAMES}
        try:
            kwargs["filters"] = Filters.from_params(raw)
        except FilterError as exc:
            raise fail(str(exc), 2) from None
        return fn(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


@app.callback(invoke_without_command=True)
def main_callback(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"spintrail {__version__}")
        raise typer.Exit()


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Listen address (default 127.0.0.1; SPINTRAIL_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default 8080; SPINTRAIL_PORT).")] = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Start on a throw-away database filled with weeks of simulated history."),
    ] = False,
) -> None:
    """Run the HTTP server: the echo webhook, the API and the web pages."""
    from spintrail.app import create_app
    from spintrail.server import run_server

    if demo:
        if database:
            raise fail("--demo uses a throw-away database; leave out --database")
        database = str(Path(tempfile.mkdtemp(prefix="spintrail-demo-")) / "demo.db")
    settings = settings_from(config, host=host, port=port, database=database)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if demo:
        err.print(f"demo: filling {settings.database} with simulated history ...")
        load_demo(settings)
    check_sinks(settings)
    store = open_store_or_exit(settings, wait=True)
    from spintrail.signer_state import EXIT_REFUSED, SignerRefused
    from spintrail.trust_api import banner, open_listen_refusal

    tls = tls_options(settings)
    scheme = "https" if tls else "http"
    try:
        refusal = open_listen_refusal(settings, store)
        if refusal:
            store.close()
            raise fail(refusal, 2)
        for line in banner(settings, store):
            err.print(line, style="bold red" if line.startswith("WARNING") else None, highlight=False)
    except typer.Exit:
        raise
    except SignerRefused as exc:
        store.close()
        raise fail(f"refusing to start: {exc}", EXIT_REFUSED) from None
    except Exception as exc:
        store.close()
        raise fail(f"cannot set up authentication and signing keys: {exc}") from None
    refuse_unlogged_events(store)
    err.print(
        f"spintrail {__version__} listening on {scheme}://{settings.host}:{settings.port} "
        f"(store: {store.backend})"
    )
    try:
        tune_gc()
        run_server(create_app(settings, store, close_store=True), settings, **tls)
    finally:
        store.close()


def refuse_unlogged_events(store: Store) -> None:
    """Exit 3 when stored events have no leaf in the tamper-evident log: they are never added silently."""
    from spintrail.trust import installed

    trust = installed(store)
    count, first = trust.log.unlogged_events() if trust is not None else (0, [])
    if count:
        store.close()
        raise fail(
            f"{count} stored event(s) have no leaf in the tamper-evident log (first: {', '.join(first)}). "
            "They are never added silently: if this store predates the log or was copied without it, run "
            "`spintrail integrity adopt`; otherwise they were inserted outside spintrail: run "
            "`spintrail verify`",
            3,
        )


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options from ``tls_cert_file``/``tls_key_file`` (both or neither)."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise fail(
            "set both tls_cert_file and tls_key_file (SPINTRAIL_TLS_CERT_FILE / SPINTRAIL_TLS_KEY_FILE)", 2
        )
    for what, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        if not path.is_file():
            raise fail(f"{what} {path} is not a readable file", 2)
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def tune_gc() -> None:
    """Set the garbage collector up for a long-running ingest process.

    Everything allocated at start-up (modules, the app, settings) is frozen out of the collector's sight,
    and collections run after 50,000 new objects instead of 700: parsing one stage event creates thousands
    of objects (none of them in cycles), and each collection walked every live object.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def uvicorn_options(log_level: str, *, access_log: bool = False) -> dict[str, Any]:
    """uvicorn settings shared by ``serve`` and the benchmark's bare HTTP ceiling: uvloop and httptools
    when installed, no access log unless asked for."""
    return {"log_level": log_level.lower(), "access_log": access_log, "loop": "auto", "http": "auto"}


def load_demo(settings: Settings, *, executions: int = 400, days: float = 21.0, seed: int = 7) -> int:
    """Fill the store with simulated history; returns the number of events stored."""
    from spintrail.simulate import Simulator

    store = open_store_or_exit(settings)
    try:
        sim = Simulator(seed=seed, days=days, executions=executions)
        return _ingest_events(settings, store, (_as_incoming(e) for e in sim.events()), label="demo")[0]
    finally:
        store.close()


def _as_incoming(event: dict[str, Any]) -> Any:
    import json

    from spintrail.decode import IncomingEvent

    return IncomingEvent(event=event, raw=json.dumps(event, separators=(",", ":")).encode())


class Counts:
    """Events stored and duplicates seen so far by a bulk load."""

    def __init__(self) -> None:
        self.stored = 0
        self.duplicates = 0


def _ingest_events(
    settings: Settings,
    store: Store,
    events: Iterator[Any],
    *,
    label: str,
    progress_total: int | None = None,
    position: Callable[[], int] | None = None,
    counts: Counts | None = None,
) -> tuple[int, int]:
    """Prepare and append events in batches with a progress bar; returns (stored, duplicates).

    When the events iterator raises, what was read before is still stored and counted in ``counts``.
    """
    from spintrail.forward import attach_outbox
    from spintrail.ingest import Ingestor

    attach_outbox(settings, store)
    ingestor = Ingestor(settings, store)
    counts = counts if counts is not None else Counts()
    batch: list[PreparedEvent] = []
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    columns += (
        [DownloadColumn(), TimeRemainingColumn()]
        if progress_total
        else [TextColumn("{task.completed} events")]
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(label, total=progress_total)

        def flush() -> None:
            if not batch:
                return
            results = store.append(batch)
            d = sum(1 for r in results if r.duplicate)
            counts.duplicates += d
            counts.stored += len(results) - d
            batch.clear()

        now = int(time.time() * 1000)
        try:
            for incoming in events:
                batch.append(ingestor.prepare(incoming, received_at=now))
                if len(batch) >= 500:
                    flush()
                if position is not None:
                    progress.update(task, completed=position())
                else:
                    progress.advance(task)
        finally:
            flush()
        if position is not None:
            progress.update(task, completed=position())
    return counts.stored, counts.duplicates


@app.command()
@with_filter_options
def search(
    *,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(help="Most records to show (1-1000).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page's next cursor.")] = None,
    format: FormatOpt = Format.table,
    filters: Filters,
) -> None:
    """Search audit records with the same filters as GET /api/v1/events (newest first)."""
    settings = settings_from(config, database=database)
    try:
        n = parse_limit(limit)
    except FilterError as exc:
        raise fail(str(exc), 2) from None
    store = open_store_or_exit(settings)
    try:
        page = store.search(filters, limit=n, cursor=cursor)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    finally:
        store.close()
    rows = [r.to_api() for r in page.records]
    emit(rows, API_FIELDS, format, table_columns=TABLE_COLUMNS, title=f"{len(rows)} events")
    if page.next_cursor and format is Format.table:
        err.print(f"more: --cursor {page.next_cursor}")


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help="JSON, JSON array or NDJSON files of echo events.")],
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    instance: Annotated[
        str | None, typer.Option(help="Spinnaker instance to record for events that name none.")
    ] = None,
    format: FormatOpt = Format.table,
) -> None:
    """Bulk-load echo events from files (for example a Splunk export); events already stored are skipped."""
    from spintrail.decode import DecodeError, iter_decode_file

    settings = settings_from(config, database=database, default_instance=instance)
    for f in files:
        if not f.is_file():
            raise fail(f"{f} is not a file: pass paths of JSON or NDJSON files", 2)
    store = open_store_or_exit(settings)
    summary: list[dict[str, Any]] = []
    failed = False
    try:
        for f in files:
            size = f.stat().st_size
            row: dict[str, Any] = {"file": str(f), "stored": 0, "duplicates": 0, "error": None}
            counter = _CountingIter(iter_decode_file(f))
            counts = Counts()
            try:
                _ingest_events(
                    settings,
                    store,
                    iter(counter),
                    label=f.name,
                    progress_total=size,
                    position=counter.position,
                    counts=counts,
                )
            except DecodeError as exc:
                failed = True
                row["error"] = f"{exc} (the events before it were imported)"
            except StoreError as exc:
                failed = True
                row["error"] = str(exc)
            row["stored"], row["duplicates"] = counts.stored, counts.duplicates
            row["events"] = row["stored"] + row["duplicates"]
            summary.append(row)
    finally:
        store.close()
    emit(summary, ("file", "events", "stored", "duplicates", "error"), format, title="import")
    if failed:
        raise typer.Exit(1)


class _CountingIter:
    """Wraps the decoder's iterator to expose how far into the file it is."""

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it
        self._pos = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self._it:
            self._pos += len(item.raw)
            yield item

    def position(self) -> int:
        return self._pos


@app.command()
def simulate(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write NDJSON to this file ('-' for standard output)."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="POST the events to this spintrail URL, e.g. http://127.0.0.1:8080/api/v1/events"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same events.")] = 0,
    executions: Annotated[int, typer.Option(help="Pipeline and orchestration runs to generate.")] = 200,
    days: Annotated[float, typer.Option(help="Days of history the events spread over, ending now.")] = 14.0,
    batch_size: Annotated[int, typer.Option(help="Events per request with --url.")] = 1,
    concurrency: Annotated[int, typer.Option(help="Concurrent requests with --url.")] = 4,
    duplicate_rate: Annotated[
        float, typer.Option(help="Fraction of events sent twice, like echo retries.")
    ] = 0.0,
    full_execution: Annotated[
        bool, typer.Option("--full-execution/--no-full-execution", help="Embed the execution in task events.")
    ] = True,
    header: Annotated[
        list[str] | None, typer.Option(help="Extra request header 'Name: value' with --url (repeatable).")
    ] = None,
) -> None:
    """Generate realistic echo events: pipelines, stages, tasks, ad-hoc operations, judgments, builds."""
    from spintrail.simulate import Simulator, post_events, write_ndjson

    if (output is None) == (url is None):
        raise fail("give exactly one of --output FILE (or -) and --url URL", 2)
    sim = Simulator(
        seed=seed,
        days=days,
        executions=executions,
        duplicate_rate=duplicate_rate,
        include_full_execution=full_execution,
    )
    if output is not None:
        if str(output) == "-":
            n = write_ndjson(sim.events(), sys.stdout.buffer)
        else:
            with private.open_file(output, "wb") as fp, Progress(console=err) as progress:
                task = progress.add_task("simulate", total=None)

                def counted() -> Iterator[dict[str, Any]]:
                    for e in sim.events():
                        progress.advance(task)
                        yield e

                n = write_ndjson(counted(), fp)
        err.print(f"wrote {n} events")
        return
    headers: dict[str, str] = {}
    for h in header or []:
        name, sep, value = h.partition(":")
        if not sep:
            raise fail(f"header {h!r} is not 'Name: value'", 2)
        headers[name.strip()] = value.strip()
    assert url is not None
    with Progress(
        TextColumn("posting"), BarColumn(), TextColumn("{task.completed} events"), console=err
    ) as progress:
        task = progress.add_task("post", total=None)
        stats = post_events(
            url,
            sim.events(),
            batch_size=batch_size,
            concurrency=concurrency,
            headers=headers,
            progress=lambda k: progress.advance(task, k),
        )
    emit(
        [
            {
                "sent": stats.sent,
                "stored": stats.stored,
                "duplicates": stats.duplicates,
                "failed": stats.failed,
                "seconds": round(stats.seconds, 2),
            }
        ],
        ("sent", "stored", "duplicates", "failed", "seconds"),
        Format.table,
        title="simulate",
        out=sys.stderr,
    )
    if stats.failed:
        raise typer.Exit(1)


def check_sinks(settings: Settings) -> None:
    """Exit with a clear message when a configured sink cannot be used (a missing CA file, say)."""
    from spintrail.sinks import build_sink

    for config in settings.sinks:
        try:
            build_sink(config).close()
        except (ValueError, OSError) as exc:
            raise fail(f"sink {config.name!r} cannot be used: {exc}; fix it in the config file") from None


@app.command()
def retention(
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed; remove nothing.")
    ] = False,
    task_days: Annotated[
        int | None, typer.Option(help="Days task events are kept (default: retention_task_days, 90).")
    ] = None,
    stage_days: Annotated[
        int | None, typer.Option(help="Days stage events are kept (default: retention_stage_days, 365).")
    ] = None,
    pipeline_days: Annotated[
        int | None,
        typer.Option(help="Days pipeline and orchestration events are kept (default 2555, 7 years)."),
    ] = None,
    other_days: Annotated[
        int | None, typer.Option(help="Days every other event is kept (default: retention_other_days, 365).")
    ] = None,
    format: FormatOpt = Format.table,
) -> None:
    """Remove events older than their class is kept (0 days keeps forever) and report what was removed."""
    from spintrail import retention as ret

    settings = settings_from(
        config,
        database=database,
        retention_task_days=task_days,
        retention_stage_days=stage_days,
        retention_pipeline_days=pipeline_days,
        retention_other_days=other_days,
    )
    store = open_store_or_exit(settings)
    try:
        with Progress(
            TextColumn("dry run" if dry_run else "removing"),
            TextColumn("{task.completed} events"),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("retention", total=None)
            report = ret.run(
                store,
                ret.Policy.from_settings(settings),
                dry_run=dry_run,
                progress=lambda n: progress.advance(task, n),
            )
    except (ret.RetentionBusy, ret.RetentionRefused) as exc:
        raise fail(str(exc)) from None
    except StoreError as exc:
        raise fail(f"{exc} (what was removed before the error stays removed; run again to finish)") from None
    finally:
        store.close()
    title = f"retention{' (dry run: nothing removed)' if dry_run else ''}, {report.seconds:.1f}s"
    emit(report.rows(), ret.REPORT_COLUMNS, format, title=title)


@app.command("migrate")
def migrate_(
    source: Annotated[
        str, typer.Option("--from", help="The store to copy: a SQLite path, sqlite:/// or postgresql:// URL.")
    ],
    target: Annotated[str, typer.Option("--to", help="The store to copy into (created when empty).")],
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Copy a whole store to another (SQLite to PostgreSQL or back), ids and raw bytes kept, with its
    tamper-evident log and signed checkpoints; re-runnable."""
    from spintrail.transfer import REPORT_COLUMNS, TransferError, copy_integrity, copy_store

    if source.strip() == target.strip():
        raise fail("--from and --to name the same database", 2)
    settings = settings_from(config)
    src = open_store_or_exit(settings.model_copy(update={"database": source}))
    try:
        dst = open_store_or_exit(settings.model_copy(update={"database": target}))
    except BaseException:
        src.close()
        raise
    try:
        total = src.stats().events
        with Progress(
            TextColumn("copying"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} events"),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("migrate", total=total)
            report = copy_store(src, dst, progress=lambda n: progress.advance(task, n))
        copied = copy_integrity(src, dst)
        source_settings = settings.model_copy(update={"database": source})
        key_line = _target_key(source_settings, dst, copied.verifier_key)
    except TransferError as exc:
        raise fail(str(exc)) from None
    except StoreError as exc:
        raise fail(f"{exc} (run the same command again to continue; nothing is copied twice)") from None
    finally:
        dst.close()
        src.close()
    emit([report.row()], REPORT_COLUMNS, format, title="migrate")
    err.print(
        f"tamper-evident log: {copied.leaves} leaves and {copied.checkpoints} signed checkpoints copied. "
        + key_line,
        highlight=False,
    )
    if report.target_events < report.source_events:
        raise fail(
            f"the target holds {report.target_events} events, fewer than the source's {report.source_events}"
        )


def _target_key(source_settings: Settings, target: Store, recorded: str | None) -> str:
    """Which key the target signs with, recorded in it when the source had not recorded one yet."""
    from spintrail import dbutil, keys
    from spintrail.signer_state import SignerState

    path = keys.default_signing_key_path(source_settings)
    verifier = recorded
    if verifier is None and path.exists():
        verifier = keys.signing_key(source_settings, create=False).verifier
        conn = target.connect()
        try:
            if not dbutil.is_sqlite(conn):
                conn.autocommit = True
            keys.record_installation_key(conn, verifier)
        finally:
            conn.close()
    if verifier is None:
        return "The source has no signing key yet: the target's first server creates the installation's key."
    state = SignerState(keys.signer_state_dir(source_settings), verifier, "-")
    return (
        f"The target signs with the source's key {'+'.join(verifier.split('+')[:2])}: start its servers with "
        f"signing_key_file = {path.absolute()} and the signer's state {state.path.name} in signer_state_dir "
        f"(now {state.directory}); checkpoints signed before the move verify with the same verifier key."
    )


@app.command()
def check(
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Skip the slow parts: SQLite quick_check, no raw blob or full-text index scan."
        ),
    ] = False,
    format: FormatOpt = Format.table,
) -> None:
    """Verify the store: storage integrity, and that events, raw bytes, tags and full text agree.

    Safe on a live store (reads one snapshot, no write lock). Exits 1 when a problem is found.
    """
    from spintrail import integrity
    from spintrail.store import CheckReport

    settings = settings_from(config, database=database)
    store = open_store_or_exit(settings, read_only=True)
    store.check_hooks.append(integrity.check_hook)  # what retention decides on still matches the log
    try:
        with Progress(
            TextColumn("verifying raw blobs"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("raw", total=None)
            report: CheckReport = store.check(
                quick=quick, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    rows: list[dict[str, Any]] = []
    for name, examined in report.checks.items():
        found = [p for p in report.problems if p.check == name]
        if not found:
            rows.append({"check": name, "examined": examined, "status": "ok", "problem": ""})
    for p in report.problems:
        rows.append(
            {
                "check": p.check,
                "examined": report.checks.get(p.check),
                "status": "problem",
                "problem": p.message,
            }
        )
    emit(rows, ("check", "examined", "status", "problem"), format, title=f"check ({report.backend})")
    if not report.ok:
        err.print(
            f"[red]{len(report.problems)} problem(s) found.[/red] Keep the file as it is, restore the latest "
            "good backup into a new path and compare (see docs/operations.md, 'Integrity check')."
        )
        raise typer.Exit(1)
    err.print("store is consistent")


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(help="Where to write the backup (a new file; never overwritten).")],
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Copy the SQLite store to PATH while the server keeps running (SQLite online backup API).

    For PostgreSQL use pg_dump (see docs/operations.md).
    """
    from spintrail.store.sqlite import SqliteStore
    from spintrail.store.sqlite_backup import BackupError

    settings = settings_from(config, database=database)
    if settings.database.startswith(("postgresql://", "postgres://")):
        raise fail(
            "backup copies SQLite stores; for PostgreSQL run `pg_dump --format=custom --file=BACKUP URL` "
            "(see docs/operations.md)",
            2,
        )
    store = open_store_or_exit(settings)
    try:
        assert isinstance(store, SqliteStore)
        with Progress(
            TextColumn("backup"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} pages"),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("backup", total=None)
            pages, events = store.backup(
                str(path), progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    except BackupError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    err.print(f"backup written to {path}: {events} events, {pages} pages (checked with quick_check)")


def main() -> None:
    """Entry point of the ``spintrail`` command."""
    private.restrict_umask()  # every file a command creates is its owner's only (private.py)
    app()


from spintrail.cli_sinks import sinks_app  # noqa: E402 - it builds on the helpers above

app.add_typer(sinks_app, name="sinks")

# The trust commands (tokens, access-log, hash, keys, checkpoint, verify, proof, verify-proof, consistency)
# and spintrail backfill (from Gate).
from spintrail import cli_backfill, trust_cli  # noqa: E402, F401

# -- reports and exports ---------------------------------------------------------------------------

report_app = typer.Typer(
    help="Reports for audits and incident reviews (the same as the web app's and GET /api/v1/reports/...).",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")

AccountsOpt = Annotated[
    str | None,
    typer.Option(
        "--accounts",
        help="Production accounts: comma-separated glob patterns, ! excludes (default: the "
        "production_accounts setting).",
    ),
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since", help="From this time: RFC 3339, epoch ms, or relative such as 24h, 7d (default 30d)."
    ),
]
SinceAllOpt = Annotated[
    str | None,
    typer.Option(
        "--since", help="From this time: RFC 3339, epoch ms, or relative such as 24h, 7d (default: all)."
    ),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Up to this time (exclusive), same forms as --since.")
]
ApplicationOpt = Annotated[
    list[str] | None, typer.Option("--application", help="Only these Spinnaker applications (repeatable).")
]


def _report(
    name: str,
    fmt: Format,
    database: str | None,
    config: Path | None,
    *,
    since: str | None = None,
    until: str | None = None,
    default_since: str | None = None,
    **kwargs: Any,
) -> None:
    from spintrail.query import parse_time
    from spintrail.report import REPORT_TABLE_COLUMNS, ReportError, account_patterns, run_report

    settings = settings_from(config, database=database)
    try:
        since_ms = parse_time(since or default_since, name="since") if (since or default_since) else None
        until_ms = parse_time(until, name="until") if until else None
    except FilterError as exc:
        raise fail(str(exc), 2) from None
    if "accounts" in kwargs:
        kwargs["accounts"] = account_patterns(kwargs["accounts"] or settings.production_accounts)
    kwargs["application"] = tuple(kwargs.get("application") or ())
    store = open_store_or_exit(settings)
    try:
        rep = run_report(store, name, since=since_ms, until=until_ms, **kwargs)
    except ReportError as exc:
        raise fail(str(exc), 2) from None
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    emit(
        rep.rows,
        rep.columns,
        fmt,
        title=f"{rep.title}: {len(rep.rows)} rows",
        table_columns=REPORT_TABLE_COLUMNS[name],
    )


@report_app.command("production-changes")
def report_production_changes(
    accounts: AccountsOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    application: ApplicationOpt = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Every deploy, resize, enable/disable, destroy, rollback and manifest change in production accounts,
    with who started it, who approved it, the tickets and the result."""
    _report(
        "production-changes",
        format,
        database,
        config,
        since=since,
        until=until,
        default_since="30d",
        accounts=accounts,
        application=application,
    )


@report_app.command("separation-of-duties")
def report_separation_of_duties(
    accounts: AccountsOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    application: ApplicationOpt = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Production changes approved by the person who started them, and those with no approval or no
    ticket."""
    _report(
        "separation-of-duties",
        format,
        database,
        config,
        since=since,
        until=until,
        default_since="30d",
        accounts=accounts,
        application=application,
    )


@report_app.command("lineage")
def report_lineage(
    server_group: Annotated[
        str | None, typer.Option("--server-group", help="One server group, e.g. checkout-prod-v042.")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="A cluster: every server group in it, e.g. checkout-prod.")
    ] = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """The history of a cluster or server group: each version, who created it, through which execution,
    with which image; when it was resized, disabled, destroyed and by whom."""
    _report("lineage", format, database, config, server_group=server_group, cluster=cluster)


@report_app.command("pipeline-history")
def report_pipeline_history(
    application: ApplicationOpt = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="One pipeline, by name or id.")] = None,
    since: SinceAllOpt = None,
    until: UntilOpt = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Every save, update and delete of a pipeline and every application update, by whom, with a diff
    against the previous version (the diff column is in --format json and csv)."""
    _report(
        "pipeline-history",
        format,
        database,
        config,
        since=since,
        until=until,
        application=application,
        pipeline=pipeline,
    )


@report_app.command("unfinished")
def report_unfinished(
    since: SinceOpt = None,
    until: UntilOpt = None,
    application: ApplicationOpt = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Executions that started but never reported an end (still running, or echo dropped the event)."""
    _report(
        "unfinished",
        format,
        database,
        config,
        since=since,
        until=until,
        default_since="30d",
        application=application,
    )


class ExportFormat(enum.StrEnum):
    """Export file formats."""

    csv = "csv"
    ndjson = "ndjson"


@app.command("export")
@with_filter_options
def export_(
    *,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: standard output).")
    ] = None,
    format: Annotated[ExportFormat, typer.Option("--format", help="csv or ndjson.")] = ExportFormat.csv,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    filters: Filters,
) -> None:
    """Export every record matching the filters (those of search) as CSV or NDJSON, streamed page by page;
    columns are the record's field names (docs/exports.md)."""
    from spintrail.export import iter_export

    settings = settings_from(config, database=database)
    store = open_store_or_exit(settings)
    written = 0
    try:
        if output is None:
            for chunk in iter_export(store, filters, format.value):
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        with (
            private.open_file(output, "wb") as fp,
            Progress(TextColumn("export"), TextColumn("{task.completed} bytes"), console=err) as progress,
        ):
            task = progress.add_task("export", total=None)
            for chunk in iter_export(store, filters, format.value):
                fp.write(chunk)
                written += len(chunk)
                progress.update(task, completed=written)
        err.print(f"wrote {written} bytes to {output}")
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc}") from None
    except (StoreError, ValueError) as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
