"""``spintrail sinks``: list the sinks, replay a range, show or retry dead letters, resume a paused sink."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from spintrail.cli import ConfigOpt, DatabaseOpt, FormatOpt, err, fail, open_store_or_exit, settings_from
from spintrail.output import Format, emit
from spintrail.query import FilterError, Filters
from spintrail.settings import Settings
from spintrail.sinks import SinkConfig
from spintrail.store import Store, StoreError

if TYPE_CHECKING:
    from spintrail.forward import ReplayResult
    from spintrail.outbox import Outbox

sinks_app = typer.Typer(
    help="Forwarding sinks: with no sub-command, list each sink's state, backlog, delivered count, "
    "dead letters and last error.",
    invoke_without_command=True,
    no_args_is_help=False,
)

SinkArg = Annotated[str, typer.Argument(help="The sink's name, as configured.", show_default=False)]
TABLE_COLUMNS = ("name", "kind", "state", "backlog", "delivered", "dead_letters", "last_error")


def _outbox(settings: Settings) -> Outbox:
    from spintrail.outbox import open_outbox

    try:
        return open_outbox(settings.database)
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"cannot open the forwarding state in {settings.database}: {exc}") from None


def _sink(settings: Settings, name: str) -> SinkConfig:
    from spintrail.forward import find_sink

    try:
        return find_sink(settings, name)
    except KeyError as exc:
        raise fail(exc.args[0], 2) from None


@sinks_app.callback()
def sinks_list(
    ctx: typer.Context,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Forwarding sinks. Alone: each sink's state, backlog, delivered count, dead letters and last error."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"database": database, "config": config}
        return
    from spintrail.forward import SINK_COLUMNS, sink_rows

    settings = settings_from(config, database=database)
    if not settings.sinks:
        err.print("no sinks configured: add [[sinks]] tables to the config file (see docs/forwarding.md)")
    outbox = _outbox(settings)
    try:
        rows = sink_rows(settings.sinks, outbox)
    finally:
        outbox.close()
    emit(rows, SINK_COLUMNS, format, table_columns=TABLE_COLUMNS, title="sinks")


def _settings(ctx: typer.Context, database: str | None, config: Path | None) -> Settings:
    parent = ctx.obj or {}
    return settings_from(config or parent.get("config"), database=database or parent.get("database"))


@sinks_app.command("replay")
def sinks_replay(
    ctx: typer.Context,
    sink: SinkArg,
    since: Annotated[
        str,
        typer.Option(help="Start of the range: events at or after this time (RFC 3339, epoch ms, 7d, 24h)."),
    ],
    until: Annotated[
        str | None, typer.Option(help="End of the range: events before this time (default: now).")
    ] = None,
    retries: Annotated[
        int,
        typer.Option(min=0, help="Tries again this many times (1 s, 2 s, 4 s ...) while the sink is down."),
    ] = 5,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Send the stored events of a time range (event time) to a sink again, now, oldest first.

    Receivers deduplicate by event id; the sink's cursor and dead letters stay as they are.
    """
    from spintrail.forward import replay

    settings = _settings(ctx, database, config)
    config_ = _sink(settings, sink)
    try:
        filters = Filters.from_params({"since": [since], **({"until": [until]} if until else {})})
    except FilterError as exc:
        raise fail(str(exc), 2) from None
    store = open_store_or_exit(settings)
    try:
        ids = _ids_in_range(store, filters)
        with Progress(
            TextColumn(f"replay to {sink}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("replay", total=len(ids))
            try:
                result = replay(
                    store, config_, ids, retries=retries, progress=lambda n: progress.advance(task, n)
                )
            except ValueError as exc:
                raise fail(f"sink {sink!r} cannot be used: {exc}") from None
    except StoreError as exc:
        raise fail(str(exc)) from None
    finally:
        store.close()
    _emit_result(sink, result, format)


def _ids_in_range(store: Store, filters: Filters) -> list[int]:
    ids: list[int] = []
    cursor: str | None = None
    while True:
        page = store.search(filters, limit=1000, cursor=cursor)
        ids += [r.id for r in page.records if r.id is not None]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    ids.sort()
    return ids


def _emit_result(sink: str, result: ReplayResult, format: Format) -> None:
    rows: list[dict[str, Any]] = [
        {
            "sink": sink,
            "events": result.events,
            "sent": result.sent,
            "rejected": len(result.rejected),
            "error": result.error,
        }
    ]
    emit(rows, ("sink", "events", "sent", "rejected", "error"), format, title="replay")
    for event_id, reason in result.rejected[:20]:
        err.print(f"rejected {event_id}: {reason}")
    if result.error:
        err.print(f"[red]error:[/red] {result.error}")
        raise typer.Exit(1)


@sinks_app.command("dead-letters")
def sinks_dead_letters(
    ctx: typer.Context,
    sink: SinkArg,
    limit: Annotated[int, typer.Option(help="Most dead letters to list (oldest first).")] = 1000,
    retry: Annotated[
        bool,
        typer.Option("--retry", help="Send the dead letters again; those the sink now accepts are removed."),
    ] = False,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """List the events a sink refused, with the sink's reason (or send them again with --retry)."""
    from spintrail.forward import DEAD_LETTER_COLUMNS, dead_letter_rows, retry_dead_letters

    settings = _settings(ctx, database, config)
    config_ = _sink(settings, sink)
    store = open_store_or_exit(settings)
    outbox = _outbox(settings)
    try:
        if retry:
            try:
                result = retry_dead_letters(store, outbox, config_)
            except ValueError as exc:
                raise fail(f"sink {sink!r} cannot be used: {exc}") from None
            _emit_result(sink, result, format)
            return
        rows = dead_letter_rows(store, outbox, sink, limit)
    finally:
        outbox.close()
        store.close()
    emit(rows, DEAD_LETTER_COLUMNS, format, title=f"dead letters of {sink}")


@sinks_app.command("resume")
def sinks_resume(
    ctx: typer.Context,
    sink: SinkArg,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Resume a sink paused after an auth error (running servers pick it up within a poll interval)."""
    settings = _settings(ctx, database, config)
    _sink(settings, sink)
    outbox = _outbox(settings)
    try:
        state = outbox.state(sink)
        if state is None:
            err.print(f"sink {sink} has not run yet: nothing to resume")
            return
        outbox.resume(sink)
    finally:
        outbox.close()
    err.print(f"sink {sink} resumed")
