"""``spintrail backfill``: store the execution history Gate still holds (see docs/backfill.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TextColumn

from spintrail.cli import ConfigOpt, DatabaseOpt, FormatOpt, app, err, fail, open_store_or_exit, settings_from
from spintrail.output import Format, emit


def _secret(value: str | None, file: Path | None, env: str, setting: object) -> str | None:
    if value:
        return value
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc.strerror}", 2) from None
    if os.environ.get(env):
        return os.environ[env]
    get = getattr(setting, "get_secret_value", None)
    return get() if get else None


@app.command("backfill")
def backfill(
    gate: Annotated[str | None, typer.Option("--gate", help="Gate's base URL (setting gate_url).")] = None,
    application: Annotated[
        list[str] | None, typer.Option("--application", help="Only these applications (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Executions started from this time: RFC 3339, epoch ms, or 14d.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Executions started up to this time.")] = None,
    execution: Annotated[
        list[str] | None, typer.Option("--execution", help="Only these execution ids (repeatable).")
    ] = None,
    repair_unfinished: Annotated[
        bool, typer.Option(help="Read exactly the executions the unfinished report lists.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Read Gate and count what would be stored; store nothing.")
    ] = False,
    instance: Annotated[str | None, typer.Option(help="Spinnaker instance to record.")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (better: SPINTRAIL_GATE_TOKEN).")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding the bearer token.")] = None,
    cookie: Annotated[str | None, typer.Option(help="Session cookie, e.g. 'SESSION=...'.")] = None,
    username: Annotated[str | None, typer.Option(help="HTTP Basic user name.")] = None,
    password_file: Annotated[Path | None, typer.Option(help="File holding the HTTP Basic password.")] = None,
    client_cert: Annotated[Path | None, typer.Option(help="PEM client certificate (X.509).")] = None,
    client_key: Annotated[Path | None, typer.Option(help="PEM key of --client-cert.")] = None,
    ca_bundle: Annotated[Path | None, typer.Option(help="PEM CA bundle for Gate's certificate.")] = None,
    state: Annotated[
        Path, typer.Option(help="Run state file: the same command resumes an interrupted run from it.")
    ] = Path("spintrail-backfill.json"),
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Executions per Gate page.")] = 100,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Store the executions Gate still holds as the echo events orca would have sent (never twice)."""
    from spintrail.backfill import (
        BackfillProgress,
        BackfillRequest,
        GateAuth,
        GateAuthError,
        GateClient,
        GateError,
        GateUnavailable,
        run_backfill,
    )
    from spintrail.forward import attach_outbox
    from spintrail.query import parse_time

    settings = settings_from(config, database=database)
    url = gate or settings.gate_url
    if not url:
        raise fail("no Gate URL: pass --gate https://gate.example.com or set SPINTRAIL_GATE_URL", 2)
    try:
        since_ms = parse_time(since, name="since") if since else None
        until_ms = parse_time(until, name="until") if until else None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    auth = GateAuth(
        token=_secret(token, token_file, "SPINTRAIL_GATE_TOKEN", settings.gate_token),
        cookie=_secret(cookie, None, "SPINTRAIL_GATE_COOKIE", settings.gate_cookie),
        username=username or settings.gate_username,
        password=_secret(None, password_file, "SPINTRAIL_GATE_PASSWORD", settings.gate_password),
        client_cert=client_cert or settings.gate_client_cert,
        client_key=client_key or settings.gate_client_key,
        ca_bundle=ca_bundle or settings.gate_ca_bundle,
    )
    request = BackfillRequest(
        applications=tuple(application or ()),
        since=since_ms,
        until=until_ms,
        executions=tuple(execution or ()),
        repair_unfinished=repair_unfinished,
        dry_run=dry_run,
        instance=instance,
        page_size=page_size,
    )
    try:
        client = GateClient(url, auth=auth, rate=settings.gate_rate)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    store = open_store_or_exit(settings)
    try:
        attach_outbox(settings, store)
        with Progress(TextColumn("{task.description}"), console=err, transient=False) as bar:
            task = bar.add_task("backfill: starting")

            def show(p: BackfillProgress) -> None:
                apps = (
                    f"applications {p.applications_done}/{p.applications_total}, "
                    if p.applications_total
                    else ""
                )
                bar.update(
                    task,
                    description=f"backfill: {apps}executions {p.executions}, events {p.events}, "
                    f"stored {p.stored}, duplicates {p.duplicates}",
                )

            result = run_backfill(settings, store, client, request, state_path=state, on_progress=show)
    except GateAuthError as exc:
        raise fail(
            f"{exc}. Give credentials with --token-file, --cookie, --username/--password-file or "
            "--client-cert/--client-key (or the gate_* settings).",
            3,
        ) from None
    except GateUnavailable as exc:
        raise fail(
            f"{exc}. What was stored so far is kept: run the same command again to resume.", 4
        ) from None
    except GateError as exc:
        raise fail(str(exc), 4) from None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    finally:
        client.close()
        store.close()
    row = result.to_api()
    emit([row], list(row), format, title="backfill")
    for eid in result.not_found:
        err.print(f"not in gate any more: {eid}")
