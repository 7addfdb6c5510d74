"""The ``spintrail`` command: serve, search, import, simulate (and more, each a sub-command)."""

from __future__ import annotations

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

from spintrail import __version__
from spintrail.output import Format, emit
from spintrail.query import FILTER_HELP, FILTER_NAMES, FilterError, Filters, parse_limit
from spintrail.record import API_FIELDS
from spintrail.settings import Settings, load_settings, store_options
from spintrail.store import PreparedEvent, Store, StoreError, open_store

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


def open_store_or_exit(settings: Settings) -> Store:
    try:
        return open_store(
            settings.database,
            batch_max=settings.commit_batch_max,
            queue_max=settings.write_queue_max,
            **store_options(settings),
        )
    except StoreError as exc:
        raise fail(f"{exc}") from None


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
    import uvicorn

    from spintrail.app import create_app

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
    store = open_store_or_exit(settings)
    err.print(
        f"spintrail {__version__} listening on http://{settings.host}:{settings.port} "
        f"(store: {store.backend})"
    )
    tune_gc()
    try:
        uvicorn.run(
            create_app(settings, store),
            host=settings.host,
            port=settings.port,
            **uvicorn_options(settings.log_level, access_log=settings.access_log),
        )
    finally:
        store.close()


def tune_gc() -> None:
    """Set the garbage collector up for a long-running ingest process.

    Everything allocated at start-up (modules, the app, settings) is frozen out of the collector's sight,
    and collections run after 50,000 new objects instead of 700: parsing one stage event creates thousands
    of objects (none of them in cycles), and each collection walked every live object. Measured on the
    realistic mix this saves 10-15% of the CPU per event.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def uvicorn_options(log_level: str, *, access_log: bool = False) -> dict[str, Any]:
    """The uvicorn settings of ``serve`` (the benchmark's bare HTTP ceiling uses the same ones).

    uvloop and httptools (installed with ``uvicorn[standard]``) are chosen when present; the access log is
    off unless asked for, since writing a line per request costs more than receiving a small event.
    """
    return {
        "log_level": log_level.lower(),
        "access_log": access_log,
        "loop": "auto",
        "http": "auto",
        "timeout_graceful_shutdown": 10,
    }


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
    from spintrail.ingest import Ingestor

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
    tune_gc()
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
            with output.open("wb") as fp, Progress(console=err) as progress:
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


def main() -> None:
    """Entry point of the ``spintrail`` command."""
    app()
