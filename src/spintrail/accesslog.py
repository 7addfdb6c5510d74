"""The access log: who read raw events, ran exports, reports, proofs, hash look-ups and verifications, when,
and with which filters. Written before the data is served (a read that cannot be logged is refused).

``GET /api/v1/access-log`` (auditor, admin) and ``spintrail access-log`` read it back, newest first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from spintrail import dbutil
from spintrail.record import format_time

MIGRATIONS: dict[str, list[tuple[int, str]]] = {
    "sqlite": [
        (
            1,
            """
            CREATE TABLE access_log (
                id INTEGER PRIMARY KEY,
                at INTEGER NOT NULL,
                principal TEXT NOT NULL,
                role TEXT,
                via TEXT,
                action TEXT NOT NULL,
                method TEXT,
                path TEXT,
                query TEXT,
                target TEXT,
                client TEXT
            );
            CREATE INDEX access_log_at ON access_log(at, id);
            CREATE INDEX access_log_principal ON access_log(principal, at)
            """,
        )
    ],
    "postgresql": [
        (
            1,
            """
            CREATE TABLE access_log (
                id BIGSERIAL PRIMARY KEY,
                at BIGINT NOT NULL,
                principal TEXT NOT NULL,
                role TEXT,
                via TEXT,
                action TEXT NOT NULL,
                method TEXT,
                path TEXT,
                query TEXT,
                target TEXT,
                client TEXT
            );
            CREATE INDEX access_log_at ON access_log(at, id);
            CREATE INDEX access_log_principal ON access_log(principal, at)
            """,
        )
    ],
}

COLUMNS: tuple[str, ...] = (
    "id",
    "at",
    "principal",
    "role",
    "via",
    "action",
    "method",
    "path",
    "query",
    "target",
    "client",
)
TABLE_COLUMNS: tuple[str, ...] = (
    "id",
    "at",
    "principal",
    "role",
    "action",
    "path",
    "query",
    "target",
    "client",
)


@dataclass(slots=True)
class Access:
    """One logged read."""

    principal: str
    action: str
    role: str | None = None
    via: str | None = None
    method: str | None = None
    path: str | None = None
    query: str | None = None
    target: str | None = None
    client: str | None = None
    at: int | None = None
    id: int | None = None

    def to_api(self) -> dict[str, Any]:
        return {c: (format_time(self.at) if c == "at" else getattr(self, c)) for c in COLUMNS}


class AccessLog:
    """Reads and writes the ``access_log`` table."""

    def __init__(self, conns: dbutil.Connections) -> None:
        self._conns = conns

    def record(self, entry: Access) -> int:
        entry.at = entry.at or int(time.time() * 1000)
        cur = dbutil.execute(
            self._conns.get(),
            "INSERT INTO access_log(at, principal, role, via, action, method, path, query, target, client)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                entry.at,
                entry.principal,
                entry.role,
                entry.via,
                entry.action,
                entry.method,
                entry.path,
                entry.query,
                entry.target,
                entry.client,
            ),
        )
        entry.id = int(cur.fetchall()[0][0])  # fetch to the end: the statement (and its write) finishes
        return entry.id

    def list(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        principal: str | None = None,
        action: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Access]:
        where: list[str] = []
        args: list[Any] = []
        for column, value, op in (
            ("at", since, ">="),
            ("at", until, "<"),
            ("principal", principal, "="),
            ("action", action, "="),
            ("id", before_id, "<"),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        text = "SELECT " + ", ".join(COLUMNS) + " FROM access_log"
        if where:
            text += " WHERE " + " AND ".join(where)
        text += " ORDER BY id DESC LIMIT ?"
        return [
            Access(**dict(zip(COLUMNS, row, strict=True)))
            for row in dbutil.rows(self._conns.get(), text, (*args, limit))
        ]
