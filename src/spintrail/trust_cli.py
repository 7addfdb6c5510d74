"""Trust commands: ``tokens``, ``access-log``, ``hash``, ``keys show``, ``checkpoint``, ``verify``, ``proof``,
``verify-proof`` and ``consistency`` (registered on the ``spintrail`` command by ``cli.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from spintrail import integrity
from spintrail.cli import ConfigOpt, DatabaseOpt, FormatOpt, app, err, fail, open_store_or_exit, settings_from
from spintrail.output import Format, emit
from spintrail.query import FilterError, parse_limit, parse_time, row_id
from spintrail.record import API_FIELDS
from spintrail.settings import Settings
from spintrail.store import Store
from spintrail.trust import Trust, install

tokens_app = typer.Typer(help="Create, list and revoke API tokens (stored hashed; secrets shown once).")
keys_app = typer.Typer(help="The checkpoint signing key.")
app.add_typer(tokens_app, name="tokens")
app.add_typer(keys_app, name="keys")

KeyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--key",
        help="Verifier key (name+id+base64), or a file holding it; repeatable. Default: this installation's.",
    ),
]


class _Opened:
    """A store with trust installed, closed on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store = open_store_or_exit(settings)
        try:
            self.trust: Trust = install(self.store, settings)
        except Exception as exc:
            self.store.close()
            raise fail(f"cannot open the trust tables of {settings.database}: {exc}") from None

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.trust.close()
        self.store.close()


def _opened(config: Path | None, database: str | None) -> _Opened:
    return _Opened(settings_from(config, database=database))


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
            o.trust.tokens.revoke(name)
        except TokenError as exc:
            raise fail(str(exc), 2) from None
    err.print(f"revoked {name}")


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
        key = o.trust.signing_key()
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
        cp = o.trust.log.sign(o.trust.signing_key().signer)
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
    with _opened(config, database) as o:
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
    """Write the evidence bundle of one event: record, raw hash, leaf, inclusion proof, signed checkpoint.
    A third party checks it with `spintrail verify-proof BUNDLE --key VERIFIER_KEY`."""
    from spintrail.accesslog import Access

    with _opened(config, database) as o:
        number = row_id(event_id)
        record = o.store.get(number) if number is not None else None
        record = record or o.store.get_by_event_id(event_id)
        if record is None:
            raise fail(f"no event with id or event_id {event_id!r}: find it with `spintrail search`", 2)
        key = o.trust.signing_key()
        try:
            bundle = o.trust.log.proof_bundle(
                record, signer=key.signer, verifier=key.verifier, include_raw=raw
            )
        except integrity.IntegrityError as exc:
            raise fail(str(exc)) from None
        o.trust.access.record(Access(principal="cli", action="proof", via="cli", target=record.event_id))
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote {output}: check it with `spintrail verify-proof {output} --key '{key.verifier}'`")


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
    with _opened(config, database) as o:
        keys = _verifier_keys(key, o.trust)
        notes_ = [_checkpoint_arg(o.trust, old), _checkpoint_arg(o.trust, new)]
        try:
            bundle = o.trust.log.consistency_bundle(notes_[0], notes_[1])
        except integrity.IntegrityError as exc:
            raise fail(str(exc)) from None
    result = integrity.verify_bundle(bundle, keys[0])
    if output is not None:
        output.write_text(json.dumps(bundle, indent=2) + "\n")
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
