"""Trust commands: ``tokens``, ``access-log``, ``hash``, ``keys show``, ``checkpoint``, ``verify``, ``proof``,
``verify-proof``, ``consistency`` and ``integrity adopt|accept-rollback|actions`` (registered on the
``spintrail`` command by ``cli.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from spintrail import integrity, private
from spintrail.cli import ConfigOpt, DatabaseOpt, FormatOpt, app, err, fail, open_store_or_exit, settings_from
from spintrail.output import Format, emit
from spintrail.query import FilterError, parse_limit, parse_time, row_id
from spintrail.record import API_FIELDS
from spintrail.settings import Settings
from spintrail.signer_state import EXIT_REFUSED, SignerRefused
from spintrail.store import Store, StoreNeedsMigration
from spintrail.trust import Trust, install

tokens_app = typer.Typer(help="Create, list and revoke API tokens (stored hashed; secrets shown once).")
keys_app = typer.Typer(help="The checkpoint signing key.")
auth_app = typer.Typer(help="Whether this store requires authentication (kept with the store).")
app.add_typer(tokens_app, name="tokens")
app.add_typer(keys_app, name="keys")
integrity_app = typer.Typer(
    help="Explicit, recorded changes to the tamper-evident log (adopt, accept-rollback); its admin actions."
)
app.add_typer(integrity_app, name="integrity")
app.add_typer(auth_app, name="auth")

KeyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--key",
        help="Verifier key (name+id+base64), or a file holding it; repeatable. Default: this installation's.",
    ),
]


class _Opened:
    """A store with trust installed, closed on exit."""

    def __init__(self, settings: Settings, *, read_only: bool = False) -> None:
        self.settings = settings
        self.store: Store = open_store_or_exit(settings, read_only=read_only)
        try:
            self.trust: Trust = install(self.store, settings)
        except StoreNeedsMigration as exc:
            self.store.close()
            raise fail(str(exc), 2) from None
        except SignerRefused as exc:
            self.store.close()
            raise fail(str(exc), EXIT_REFUSED) from None
        except Exception as exc:
            self.store.close()
            raise fail(f"cannot open the trust tables of {settings.database}: {exc}") from None

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.trust.close()
        self.store.close()


def _opened(config: Path | None, database: str | None, *, read_only: bool = False) -> _Opened:
    """The store and its trust components; ``read_only`` for commands that only examine the evidence
    (nothing is written, created or migrated)."""
    return _Opened(settings_from(config, database=database), read_only=read_only)


# --------------------------------------------------------------------------------------------- tokens


@tokens_app.command("create")
def tokens_create(
    name: Annotated[
        str, typer.Argument(help="Token name, recorded with every event and read it is used for.")
    ],
    role: Annotated[str, typer.Option("--role", help="ingest, viewer, auditor or admin.")],
    application: Annotated[
        list[str] | None,
        typer.Option("--application", help="Limit the token to this application (repeatable)."),
    ] = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Create a token and print its secret (only once: it is stored hashed)."""
    from spintrail.tokens import TokenError

    with _opened(config, database) as o:
        try:
            secret = o.trust.tokens.create(name, role, application, created_by="cli")
        except TokenError as exc:
            raise fail(str(exc), 2) from None
    row = {"name": name, "role": role, "applications": application or None, "secret": secret}
    emit([row], ("name", "role", "applications", "secret"), format, title="token created")
    if format is Format.table:
        err.print(
            "The secret is shown this once. echo: `headers: {Authorization: Bearer <secret>}` or "
            "`password: <secret>`; readers: `Authorization: Bearer <secret>`."
        )


@tokens_app.command("list")
def tokens_list(
    database: DatabaseOpt = None, config: ConfigOpt = None, format: FormatOpt = Format.table
) -> None:
    """List tokens (never their secrets): role, applications, status, last use."""
    from spintrail.tokens import LIST_COLUMNS

    with _opened(config, database) as o:
        rows = [r.to_api() for r in o.trust.tokens.list()]
    emit(rows, LIST_COLUMNS, format, title=f"{len(rows)} tokens")


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(help="Name of the token to revoke.")],
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a token: it stops working within seconds; its name stays in the records."""
    from spintrail.tokens import TokenError

    with _opened(config, database) as o:
        try:
            o.trust.tokens.revoke(name, by="cli")
        except TokenError as exc:
            raise fail(str(exc), 2) from None
    err.print(f"revoked {name}")


# --------------------------------------------------------------------------------------------- auth


@auth_app.command("status")
def auth_status(database: DatabaseOpt = None, config: ConfigOpt = None) -> None:
    """Show whether the store requires authentication, and how many tokens are active."""
    with _opened(config, database) as o:
        state = o.trust.tokens.auth_state()
        active = o.trust.tokens.active_count()
        mode = o.settings.auth
    if mode == "off":
        line = "OFF (the auth setting is off): every caller is admin"
    elif mode == "on" or state == "on" or active:
        line = "ON: every request needs a token"
        if not active:
            line += "; no token is active, so nobody can send or read (`spintrail tokens create` makes one)"
    else:
        line = "OFF (no token was ever created): every caller is admin; a token turns it on for good"
    typer.echo(f"authentication: {line}")
    typer.echo(f"store state: {state or 'never on'}; active tokens: {active}; auth setting: {mode}")


@auth_app.command("off")
def auth_off(
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: with no active token, every caller becomes admin.")
    ] = False,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Turn authentication OFF for this store: once no token is active, anyone who can reach the server
    can send, read and verify events as admin (as on a fresh store). Refused while a token is active."""
    if not yes:
        raise fail(
            "this turns authentication off: with no active token every caller is admin. Run again with "
            "--yes to do it",
            2,
        )
    with _opened(config, database) as o:
        active = o.trust.tokens.active_count()
        if active:
            raise fail(
                f"{active} token(s) are active, so authentication stays on: revoke them first "
                "(`spintrail tokens list`, `spintrail tokens revoke NAME`)",
                2,
            )
        o.trust.tokens.set_auth_state("off", by="cli", reason="spintrail auth off")
    err.print(
        "authentication is now OFF for this store: every caller is admin (servers follow within "
        "token_cache_seconds). Creating a token turns it on again."
    )


# --------------------------------------------------------------------------------------------- access log


@app.command("access-log")
def access_log(
    since: Annotated[str | None, typer.Option(help="From this time: RFC 3339, epoch ms, or 7d.")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (exclusive).")] = None,
    principal: Annotated[str | None, typer.Option(help="Only this token or user.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action: raw, event, export, report, proof, hash, verify.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most entries to show (1-1000).")] = 100,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Who read raw events, exports, reports, proofs and hash look-ups, newest first."""
    from spintrail.accesslog import COLUMNS, TABLE_COLUMNS

    try:
        n = parse_limit(limit)
        s = parse_time(since, name="since") if since else None
        u = parse_time(until, name="until") if until else None
    except FilterError as exc:
        raise fail(str(exc), 2) from None
    with _opened(config, database) as o:
        rows = o.trust.access.list(since=s, until=u, principal=principal, action=action, limit=n)
    emit([r.to_api() for r in rows], COLUMNS, format, table_columns=TABLE_COLUMNS, title="access log")


# --------------------------------------------------------------------------------------------- hash


@app.command("hash")
def hash_(
    value: Annotated[
        str, typer.Argument(help="The secret value to look for ('-' reads it from standard input).")
    ],
    limit: Annotated[int, typer.Option(help="Most records to show.")] = 50,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Does this value appear? Prints its hmac-sha256 form here and the records that carry it."""
    from spintrail.accesslog import Access
    from spintrail.cli import TABLE_COLUMNS

    if value == "-":
        value = sys.stdin.readline().rstrip("\n")
    if not value:
        raise fail("give a non-empty value", 2)
    with _opened(config, database) as o:
        hashed = o.trust.scrubber.hash_value(value)
        o.trust.access.record(Access(principal="cli", action="hash", via="cli", target=hashed))
        _, rows = o.trust.find_value(value, limit=limit)
    records = [r.to_api() for r in rows]
    err.print(f"{hashed}: {len(records)} record(s)", highlight=False)
    emit(records, API_FIELDS, format, table_columns=TABLE_COLUMNS, title=hashed)


# --------------------------------------------------------------------------------------------- keys


@keys_app.command("show")
def keys_show(
    database: DatabaseOpt = None, config: ConfigOpt = None, format: FormatOpt = Format.table
) -> None:
    """Print the public verifier key of the checkpoints (give it to auditors)."""
    with _opened(config, database) as o:
        try:
            key = o.trust.signing_key()
        except SignerRefused as exc:
            raise fail(str(exc), EXIT_REFUSED) from None
        row = {
            "origin": o.trust.origin,
            "key_name": key.name,
            "verifier_key": key.verifier,
            "signing_key_file": str(key.path),
        }
    if format is Format.table:
        typer.echo(key.verifier)
        err.print(f"log {row['origin']}; signing key kept in {row['signing_key_file']} (keep it secret)")
        return
    emit([row], ("origin", "key_name", "verifier_key", "signing_key_file"), format)


@app.command("checkpoint")
def checkpoint_now(database: DatabaseOpt = None, config: ConfigOpt = None) -> None:
    """Sign a checkpoint of the log now and print it (also written to checkpoint_dir)."""
    with _opened(config, database) as o:
        try:
            cp = o.trust.log.sign(o.trust.signing_key().signer)
        except SignerRefused as exc:
            raise fail(str(exc), EXIT_REFUSED) from None
    typer.echo(cp.note, nl=False)


# --------------------------------------------------------------------------------------------- verify


def _verifier_keys(keys: list[str] | None, trust: Trust | None) -> list[str]:
    out: list[str] = []
    for k in keys or []:
        p = Path(k)
        out.append(p.read_text().strip() if "+" not in k and p.is_file() else k.strip())
    if not out:
        if trust is None:
            raise fail("give the verifier key with --key (name+id+base64, or a file holding it)", 2)
        try:
            out.append(trust.signing_key(create=False).verifier)
        except Exception as exc:
            raise fail(f"{exc}; or give the verifier key with --key", 2) from None
        err.print(
            "[yellow]note:[/yellow] checking with this installation's own key; pass --key with the verifier "
            "key you were given for an independent check"
        )
    return out


@app.command()
def verify(
    key: KeyOpt = None,
    checkpoints: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoints", help="Exported checkpoint files or directories (checkpoint_dir) to check too."
        ),
    ] = None,
    start: Annotated[int, typer.Option(help="First leaf whose record is re-read.")] = 0,
    end: Annotated[int | None, typer.Option(help="Leaf after the last one re-read (default: all).")] = None,
    raw: Annotated[bool, typer.Option("--raw/--no-raw", help="Also re-hash the raw bytes kept.")] = True,
    origin: Annotated[
        str | None, typer.Option(help="Expected log origin (default: the checkpoints').")
    ] = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Check every record against the hash chain, the Merkle tree and the signed checkpoints, naming any
    record that was changed, removed, reordered or added; exits 1 when something is wrong."""
    for p in checkpoints or []:
        if not p.exists():
            raise fail(f"{p} does not exist: pass checkpoint files or the checkpoint_dir directory", 2)
    exported = integrity.read_checkpoint_files(checkpoints or [])
    with _opened(config, database, read_only=True) as o:
        keys = _verifier_keys(key, o.trust)
        with Progress(
            TextColumn("verify"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} leaves"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("verify", total=None)
            report = integrity.verify(
                o.store,
                o.trust.conns,
                keys,
                exported=exported,
                origin=origin,
                start=start,
                end=end,
                check_raw=raw,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    if format is Format.json:
        typer.echo(json.dumps(report.to_api(), indent=2))
    else:
        rows = [p.to_api() for p in report.problems]
        if rows:
            emit(
                rows,
                ("kind", "leaf", "record", "event_id", "checkpoint", "message"),
                format,
                title="problems",
            )
        latest = report.latest_verified or {}
        summary = {
            "result": "OK" if report.ok else f"{len(report.problems)} PROBLEM(S)",
            "log": report.origin,
            "leaves": report.leaves,
            "records re-hashed": report.records_checked,
            "raw events re-hashed": report.raw_checked,
            "raw events not kept": report.raw_not_kept,
            "records removed by retention": report.content_removed,
            "search indexes checked": report.index_checked,
            "administrative actions": ", ".join(f"{k} {v}" for k, v in sorted(report.admin_actions.items()))
            or "none",
            "checkpoints excused by an accepted rollback": report.checkpoints_excused,
            "signed checkpoints checked": report.checkpoints_checked,
            "latest good checkpoint": f"{latest.get('label')} (size {latest.get('size')}, signed "
            f"{latest.get('signed_at')})"
            if latest
            else None,
        }
        emit(
            [{"check": k, "result": v} for k, v in summary.items()],
            ("check", "result"),
            format,
            title="verify",
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def proof(
    event_id: Annotated[str, typer.Argument(help="Event id (echo eventId) or store id.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the bundle here (default: standard output).")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Include the raw bytes kept (base64).")] = False,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write the evidence bundle of one event: record, raw hash, leaf, inclusion proof, and the latest stored
    signed checkpoint covering it (the database is only read). A third party checks it with
    `spintrail verify-proof BUNDLE --key VERIFIER_KEY`."""
    with _opened(config, database, read_only=True) as o:
        number = row_id(event_id)
        record = o.store.get(number) if number is not None else None
        record = record or o.store.get_by_event_id(event_id)
        if record is None:
            raise fail(f"no event with id or event_id {event_id!r}: find it with `spintrail search`", 2)
        try:  # read-only: the key file is only read when it is there, never created
            verifier: str | None = o.trust.signing_key(create=False).verifier
        except Exception:
            verifier = None
        try:
            bundle = o.trust.log.proof_bundle(record, verifier=verifier, include_raw=raw)
        except integrity.IntegrityError as exc:
            raise fail(str(exc)) from None
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        private.write_text(output, text)
        shown = verifier or "VERIFIER_KEY"
        err.print(f"wrote {output}: check it with `spintrail verify-proof {output} --key '{shown}'`")


@app.command("verify-proof")
def verify_proof(
    bundle: Annotated[Path, typer.Argument(help="An evidence bundle (proof) or consistency bundle (JSON).")],
    key: Annotated[
        str, typer.Option("--key", help="The verifier key you trust (name+id+base64), or a file.")
    ],
    format: FormatOpt = Format.table,
) -> None:
    """Check a bundle with nothing but the verifier key (no database, no settings); exits 1 if it fails."""
    if not bundle.is_file():
        raise fail(f"{bundle} is not a file: pass the bundle written by `spintrail proof`", 2)
    try:
        data = json.loads(bundle.read_text())
    except ValueError as exc:
        raise fail(f"{bundle} is not JSON: {exc}", 2) from None
    keys = _verifier_keys([key], None)
    result = integrity.verify_bundle(data, keys[0])
    row = {"ok": result.ok, "kind": result.kind, "summary": result.summary, "problems": result.problems}
    if format is Format.json:
        typer.echo(json.dumps({**row, **result.details}, indent=2))
    else:
        emit([row], ("ok", "kind", "summary", "problems"), format, title="verify-proof")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def consistency(
    old: Annotated[
        str, typer.Argument(help="The older checkpoint: a checkpoint file, or the size of a stored one.")
    ],
    new: Annotated[str, typer.Argument(help="The newer checkpoint: a file, a size, or 'latest'.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the consistency bundle (JSON) here.")
    ] = None,
    key: KeyOpt = None,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Prove the log only grew between two checkpoints (RFC 6962 consistency proof); exits 1 if not."""
    with _opened(config, database, read_only=True) as o:
        keys = _verifier_keys(key, o.trust)
        notes_ = [_checkpoint_arg(o.trust, old), _checkpoint_arg(o.trust, new)]
        try:
            bundle = o.trust.log.consistency_bundle(notes_[0], notes_[1])
        except integrity.IntegrityError as exc:
            raise fail(str(exc)) from None
    result = integrity.verify_bundle(bundle, keys[0])
    if output is not None:
        private.write_text(output, json.dumps(bundle, indent=2) + "\n")
        err.print(f"wrote {output}: check it with `spintrail verify-proof {output} --key VERIFIER_KEY`")
    row: dict[str, Any] = {
        "ok": result.ok,
        "summary": result.summary,
        "problems": result.problems,
        **result.details,
    }
    emit([row], ("ok", "old_size", "new_size", "summary", "problems"), format, title="consistency")
    if not result.ok:
        raise typer.Exit(1)


def _checkpoint_arg(trust: Trust, arg: str) -> str:
    p = Path(arg)
    if p.is_file():
        return p.read_text()
    if arg == "latest":
        cp = trust.log.latest()
    elif row_id(arg) is not None:
        cp = trust.log.checkpoint_of_size(int(arg))
    else:
        raise fail(f"{arg!r} is neither a checkpoint file nor the size of a stored checkpoint", 2)
    if cp is None:
        raise fail(f"no stored checkpoint {arg}: sign one with `spintrail checkpoint`", 2)
    return cp.note


# --------------------------------------------------------------------------------------------- integrity


@integrity_app.command("adopt")
def integrity_adopt(
    database: DatabaseOpt = None, config: ConfigOpt = None, format: FormatOpt = Format.table
) -> None:
    """Give leaves to events that have none (a store from before the log, a copy made without it) and
    acknowledge content removed before removals were recorded; recorded in the log as `adopt` actions."""
    with _opened(config, database) as o:
        count, first = o.trust.log.unlogged_events()
        outcome = o.trust.log.adopt()
    emit([outcome], ("events_adopted", "leaves", "removals_acknowledged"), format, title="integrity adopt")
    if count and format is Format.table:
        err.print(
            f"adopted {count} event(s), first {', '.join(first)}; sign a checkpoint: `spintrail checkpoint`"
        )


@integrity_app.command("accept-rollback")
def integrity_accept_rollback(
    to: Annotated[
        int, typer.Option("--to", help="The size of the restored log (confirms what is accepted).")
    ],
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Accept that the database was restored from a backup older than checkpoints signed before: recorded in
    the log as an `accept_rollback` action, after which verify excuses those checkpoints."""
    if to < 0:
        raise fail("--to is a log size: 0 or more", 2)
    with _opened(config, database) as o:
        try:
            outcome = o.trust.accept_rollback(to)
        except integrity.IntegrityError as exc:
            raise fail(str(exc), 2) from None
        if outcome["signer_state"] is None:
            err.print("no signing key here: run this where the signer runs, so that its head is reset too")
    emit(
        [outcome],
        ("leaf", "to", "largest_stored_checkpoint", "by", "signer_state"),
        format,
        title="integrity accept-rollback",
    )


@integrity_app.command("actions")
def integrity_actions(
    action: Annotated[
        str | None,
        typer.Option(
            help="Only this action: token_created, token_revoked, auth_mode_changed, retention, backfill, "
            "adopt, accept_rollback."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Most entries to show (1-1000).")] = 100,
    database: DatabaseOpt = None,
    config: ConfigOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Administrative actions recorded in the tamper-evident log, newest first (verify checks them)."""
    try:
        n = parse_limit(limit)
    except FilterError as exc:
        raise fail(str(exc), 2) from None
    with _opened(config, database) as o:
        rows = [a.to_api() for a in integrity.admin_actions(o.trust.conns.get(), action=action, limit=n)]
    emit(rows, ("leaf", "action", "at", "details"), format, title="administrative actions")
