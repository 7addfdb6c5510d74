"""API tokens: named, revocable secrets with a role and optionally a list of applications.

Only the SHA-256 of a secret is stored (tokens are 256 random bits, so a fast hash is enough: there is
nothing to brute-force); the secret is shown once, when the token is created. Tokens can also come from
settings (``admin_token``, ``ingest_tokens``) for deployments that keep secrets in the environment, e.g.
Kubernetes Secrets; those are never written to the database.

Roles: ``ingest`` (send events), ``viewer`` (search, timelines, dashboards), ``auditor`` (also raw events,
exports, reports, proofs, verification, the access log), ``admin`` (everything, including settings, sinks
and retention).

Whether a store requires authentication is kept with the store (``trust_meta`` row ``auth``), so every
replica agrees: it is set to ``on`` the first time authentication is on (a token is created, or a server
runs with token settings, a proxy user header or ``auth = on``) and stays on, also once every token is
revoked (then nobody can read until a new token is created), until ``spintrail auth off`` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spintrail import dbutil
from spintrail.record import format_time
from spintrail.settings import Settings

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("ingest", "viewer", "auditor", "admin")
TOKEN_PREFIX = "st_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

MIGRATIONS: dict[str, list[tuple[int, str]]] = {
    "sqlite": [
        (
            1,
            """
            CREATE TABLE auth_tokens (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                role TEXT NOT NULL,
                applications TEXT,
                secret_sha256 BLOB NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                created_by TEXT,
                revoked_at INTEGER,
                last_used_at INTEGER
            )
            """,
        )
    ],
    "postgresql": [
        (
            1,
            """
            CREATE TABLE auth_tokens (
                id BIGSERIAL PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                role TEXT NOT NULL,
                applications TEXT,
                secret_sha256 BYTEA NOT NULL UNIQUE,
                prefix TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                created_by TEXT,
                revoked_at BIGINT,
                last_used_at BIGINT
            )
            """,
        )
    ],
}


#: The ``trust_meta`` row that holds the store's authentication state (``on`` or ``off``).
AUTH_STATE = "auth"


class TokenError(ValueError):
    """A token cannot be created or revoked; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token grants. ``applications`` is ``None`` for every application."""

    name: str
    role: str
    applications: frozenset[str] | None = None
    source: str = "database"  # or "settings"
    revoked: bool = False


@dataclass(slots=True)
class TokenRow:
    """A token as ``tokens list`` shows it (never the secret)."""

    name: str
    role: str
    applications: list[str] | None
    prefix: str
    created_at: int | None
    created_by: str | None = None
    revoked_at: int | None = None
    last_used_at: int | None = None
    source: str = "database"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "applications": self.applications,
            "prefix": self.prefix,
            "source": self.source,
            "created_at": format_time(self.created_at),
            "created_by": self.created_by,
            "revoked_at": format_time(self.revoked_at),
            "last_used_at": format_time(self.last_used_at),
            "status": "revoked" if self.revoked_at else "active",
        }


LIST_COLUMNS: tuple[str, ...] = (
    "name",
    "role",
    "applications",
    "status",
    "prefix",
    "source",
    "created_at",
    "created_by",
    "last_used_at",
    "revoked_at",
)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def _set_auth_state(conn: Any, state: str) -> str | None:
    """Within a transaction: store the authentication state, returning the previous one."""
    row = dbutil.one(conn, "SELECT value FROM trust_meta WHERE name = ?", (AUTH_STATE,))
    before = dbutil.as_bytes(row[0]).decode() if row is not None else None
    if before == state:
        return before
    dbutil.execute(
        conn,
        "INSERT INTO trust_meta(name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (AUTH_STATE, state.encode()),
    )
    return before


def auth_mode_changed(tokens: TokenStore, before: str | None, after: str, *, by: str, reason: str) -> None:
    """The one place a change of a store's authentication state is reported, once it is stored (``before``
    is ``None`` when it was never set)."""
    log.warning(
        "authentication of this store changed from %s to %s (by %s: %s)", before or "unset", after, by, reason
    )


def settings_tokens(settings: Settings) -> dict[bytes, TokenInfo]:
    """The tokens given by settings, by secret hash."""
    out: dict[bytes, TokenInfo] = {}
    if settings.admin_token is not None and settings.admin_token.get_secret_value().strip():
        secret = settings.admin_token.get_secret_value().strip()
        out[secret_hash(secret)] = TokenInfo("settings:admin", "admin", None, "settings")
    if settings.ingest_tokens is not None:
        parts = [p.strip() for p in settings.ingest_tokens.get_secret_value().split(",") if p.strip()]
        for i, part in enumerate(parts, 1):
            name, sep, secret = part.partition("=")
            if not sep:
                name, secret = f"ingest-{i}", part
            name, secret = name.strip(), secret.strip()
            if not secret:
                raise TokenError(f"ingest_tokens entry {i} ({name}) has an empty secret")
            out[secret_hash(secret)] = TokenInfo(f"settings:{name}", "ingest", None, "settings")
    return out


class TokenStore:
    """Tokens in the database (table ``auth_tokens``) plus the ones from settings."""

    def __init__(
        self,
        conns: dbutil.Connections,
        settings: Settings,
        *,
        audit: Callable[[Any, str, dict[str, Any]], Any] | None = None,
    ) -> None:
        self._conns = conns
        self._settings = settings_tokens(settings)
        #: Records a change as an administrative action, in the change's transaction (the integrity log).
        self._audit = audit

    @property
    def from_settings(self) -> dict[bytes, TokenInfo]:
        return self._settings

    def create(
        self,
        name: str,
        role: str,
        applications: Sequence[str] | None = None,
        *,
        created_by: str | None = None,
    ) -> str:
        """Create a token and return its secret (shown once; only its hash is kept)."""
        if not _NAME.fullmatch(name or ""):
            raise TokenError(
                f"token name {name!r} is not valid: use 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit"
            )
        check_role(role)
        apps = sorted({a.strip() for a in applications or () if a.strip()}) or None
        secret = new_secret()
        conn = self._conns.get()
        with dbutil.transaction(conn, lock="auth_tokens"):
            if dbutil.one(conn, "SELECT 1 FROM auth_tokens WHERE name = ?", (name,)) is not None:
                raise TokenError(
                    f"a token named {name!r} exists already (names of revoked tokens stay taken, so the "
                    "access log stays unambiguous): choose another name"
                )
            auth_before = _set_auth_state(conn, "on")
            dbutil.execute(
                conn,
                "INSERT INTO auth_tokens(name, role, applications, secret_sha256, prefix, created_at,"
                " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    role,
                    json.dumps(apps) if apps else None,
                    secret_hash(secret),
                    secret[: len(TOKEN_PREFIX) + 6],
                    int(time.time() * 1000),
                    created_by,
                ),
            )
            if self._audit is not None:
                details = {"name": name, "role": role, "applications": apps, "by": created_by}
                self._audit(conn, "token_created", details)
                if auth_before != "on":
                    self._audit(
                        conn,
                        "auth_mode_changed",
                        {
                            "from": auth_before,
                            "to": "on",
                            "by": created_by,
                            "reason": f"token {name} created",
                        },
                    )
        if auth_before != "on":
            by = created_by or "unknown"
            auth_mode_changed(self, auth_before, "on", by=by, reason=f"token {name} created")
        return secret

    def revoke(self, name: str, *, by: str | None = None) -> None:
        conn = self._conns.get()
        with dbutil.transaction(conn, lock="auth_tokens"):
            row = dbutil.one(conn, "SELECT revoked_at FROM auth_tokens WHERE name = ?", (name,))
            if row is None:
                if name.startswith("settings:"):
                    raise TokenError(
                        f"{name} comes from settings: remove it from admin_token / ingest_tokens and restart"
                    )
                raise TokenError(f"no token named {name!r}: see `spintrail tokens list`")
            if row[0] is not None:
                raise TokenError(f"token {name!r} is already revoked")
            dbutil.execute(
                conn,
                "UPDATE auth_tokens SET revoked_at = ? WHERE name = ?",
                (int(time.time() * 1000), name),
            )
            if self._audit is not None:
                self._audit(conn, "token_revoked", {"name": name, "by": by})

    def list(self) -> list[TokenRow]:
        out = [
            TokenRow(
                name=name,
                role=role,
                applications=json.loads(apps) if apps else None,
                prefix=prefix,
                created_at=created,
                created_by=by,
                revoked_at=revoked,
                last_used_at=used,
            )
            for name, role, apps, prefix, created, by, revoked, used in dbutil.rows(
                self._conns.get(),
                "SELECT name, role, applications, prefix, created_at, created_by, revoked_at, last_used_at"
                " FROM auth_tokens ORDER BY id",
            )
        ]
        out += [
            TokenRow(
                name=t.name, role=t.role, applications=None, prefix="", created_at=None, source="settings"
            )
            for t in self._settings.values()
        ]
        return out

    def lookup(self, secret: str) -> TokenInfo | None:
        """The token with this secret (``revoked`` set when it was revoked), or ``None``."""
        digest = secret_hash(secret)
        found = self._settings.get(digest)
        if found is not None:
            return found
        row = dbutil.one(
            self._conns.get(),
            "SELECT name, role, applications, revoked_at FROM auth_tokens WHERE secret_sha256 = ?",
            (digest,),
        )
        if row is None:
            return None
        name, role, apps, revoked = row
        return TokenInfo(
            name=name,
            role=role,
            applications=frozenset(json.loads(apps)) if apps else None,
            revoked=revoked is not None,
        )

    def active_count(self) -> int:
        row = dbutil.one(self._conns.get(), "SELECT count(*) FROM auth_tokens WHERE revoked_at IS NULL")
        return int(row[0]) + len(self._settings)

    def auth_state(self) -> str | None:
        """The store's authentication state: ``on``, ``off`` (turned off by an admin) or ``None`` (never
        on yet)."""
        row = dbutil.one(self._conns.get(), "SELECT value FROM trust_meta WHERE name = ?", (AUTH_STATE,))
        return dbutil.as_bytes(row[0]).decode() if row is not None else None

    def set_auth_state(self, state: str, *, by: str, reason: str) -> str | None:
        """Record the store's authentication state (``on`` or ``off``); returns the previous one."""
        if state not in ("on", "off"):
            raise ValueError(f"authentication state must be on or off, not {state!r}")
        conn = self._conns.get()
        with dbutil.transaction(conn, lock="trust_meta"):
            before = _set_auth_state(conn, state)
            if before != state and self._audit is not None:
                self._audit(
                    conn, "auth_mode_changed", {"from": before, "to": state, "by": by, "reason": reason}
                )
        if before != state:
            auth_mode_changed(self, before, state, by=by, reason=reason)
        return before

    def touch(self, used: dict[str, int]) -> None:
        """Record when tokens were last used (flushed in the background, at most once a minute)."""
        if not used:
            return
        conn = self._conns.get()
        with dbutil.transaction(conn):
            for name, at in used.items():
                dbutil.execute(
                    conn,
                    "UPDATE auth_tokens SET last_used_at = ? WHERE name = ? AND"
                    " (last_used_at IS NULL OR last_used_at < ?)",
                    (at, name, at),
                )
