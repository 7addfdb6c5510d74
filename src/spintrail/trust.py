"""Trust wiring: installs tokens, the access log, redaction and the tamper-evident log on a store.

``install(store, settings)`` is called by every writer (the server, ``spintrail import``, the demo loader,
through ``Ingestor``) and by the trust commands; it is idempotent per store. It applies the components'
schema migrations, loads (or creates, on first start) the installation keys and registers the write hooks
that keep the redacted-value index and the tamper-evident log in step with the events. It never gives leaves
to events that lack them: that is ``spintrail integrity adopt``, an explicit and recorded action.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from spintrail import accesslog, dbutil, integrity, keys, scrub, tokens
from spintrail.record import AuditRecord
from spintrail.settings import Settings
from spintrail.store import Store

log = logging.getLogger(__name__)

_install_lock = threading.Lock()

#: The forms a value is looked up in by ``find_value``: itself, and as an ``Authorization`` credential.
HASH_FORMS: tuple[str, ...] = ("{}", "Bearer {}", "Basic {}", "Token {}", "token {}", "Splunk {}")


class Trust:
    """The trust components of one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        for component, migrations in (
            ("trust_meta", keys.MIGRATIONS),
            ("tokens", tokens.MIGRATIONS),
            ("access_log", accesslog.MIGRATIONS),
            ("integrity", integrity.MIGRATIONS),
            ("redaction", scrub.MIGRATIONS),
        ):
            dbutil.migrate(store, component, migrations)
        self.conns = dbutil.Connections(store)
        conn = self.conns.get()
        self.installation_id = keys.installation_id(conn)
        self.origin = settings.log_origin or f"spintrail/{self.installation_id}"
        self.scrubber = scrub.Scrubber(
            keys.redaction_key(conn, settings),
            raw_events=settings.raw_events,
            extra_patterns=tuple(settings.secret_key_patterns),
        )
        # Token changes are administrative actions: recorded in the tamper-evident log, same transaction.
        self.tokens = tokens.TokenStore(self.conns, settings, audit=integrity.record_admin_action)
        self.access = accesslog.AccessLog(self.conns)
        self.log = integrity.IntegrityLog(store, self.conns, self.origin)
        self.log.checkpoint_dir = settings.checkpoint_dir
        store.write_hooks.append(scrub.index_hook)
        store.write_hooks.append(self.log.hook)
        self._signing: keys.SigningKey | None = None

    def signing_key(self, *, create: bool = True) -> keys.SigningKey:
        """The checkpoint signing key (created with mode 0600 on first use when ``create``)."""
        if self._signing is None:
            self._signing = keys.signing_key(
                self.settings, name_hint=f"spintrail-{self.installation_id[:8]}", create=create
            )
        return self._signing

    def find_value(self, value: str, *, limit: int = 100) -> tuple[dict[str, str], list[AuditRecord]]:
        """Does ``value`` appear? Its hashes (as itself and as the credential of an ``Authorization``-style
        header value, which is hashed whole) and the records carrying any of them, within the caller's
        application scope, oldest first."""
        forms = {form.format("<value>"): self.scrubber.hash_value(form.format(value)) for form in HASH_FORMS}
        rows: set[int] = set()
        conn = self.conns.get()
        for hashed in forms.values():
            rows.update(scrub.records_with(conn, hashed, limit=limit * 4))
        found: list[AuditRecord] = []
        for row in sorted(rows):
            record = self.store.get(row)
            if record is not None:
                found.append(record)
                if len(found) >= limit:
                    break
        return forms, found

    def close(self) -> None:
        self.conns.close()


def install(store: Store, settings: Settings) -> Trust:
    """The store's trust components, installed on first call."""
    with _install_lock:
        existing: Trust | None = getattr(store, "_spintrail_trust", None)
        if existing is None:
            existing = Trust(store, settings)
            store._spintrail_trust = existing  # type: ignore[attr-defined]
        return existing


def installed(store: Any) -> Trust | None:
    return getattr(store, "_spintrail_trust", None)
