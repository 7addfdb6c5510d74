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

from spintrail import accesslog, dbutil, integrity, keys, scrub, signer_state, tokens
from spintrail.record import AuditRecord
from spintrail.settings import Settings
from spintrail.signer_state import SignerRefused
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
        #: On a read-only store (verification): nothing is created, migrated, backfilled or hooked.
        self.read_only: bool = getattr(store, "read_only", False)
        writable = not self.read_only
        for component, migrations in (
            ("trust_meta", keys.MIGRATIONS),
            ("tokens", tokens.MIGRATIONS),
            ("access_log", accesslog.MIGRATIONS),
            ("integrity", integrity.MIGRATIONS),
            ("redaction", scrub.MIGRATIONS),
        ):
            # Read-only (a check of the log needs only its own tables): the store checks, never migrates.
            if writable or component in ("trust_meta", "integrity"):
                dbutil.migrate(store, component, migrations)
        self.conns = dbutil.Connections(store)
        conn = self.conns.get()
        self.installation_id = keys.installation_id(conn, create=writable) or "unknown"
        self.origin = settings.log_origin or f"spintrail/{self.installation_id}"
        self.scrubber = scrub.Scrubber(
            keys.redaction_key(conn, settings, create=writable),
            raw_events=settings.raw_events,
            extra_patterns=tuple(settings.secret_key_patterns),
        )
        # Token changes are administrative actions: recorded in the tamper-evident log, same transaction.
        self.tokens = tokens.TokenStore(self.conns, settings, audit=integrity.record_admin_action)
        self.access = accesslog.AccessLog(self.conns)
        self.log = integrity.IntegrityLog(store, self.conns, self.origin)
        self.log.checkpoint_dir = settings.checkpoint_dir
        if writable:
            store.write_hooks.append(scrub.index_hook)
            store.write_hooks.append(self.log.hook)
        self._signing: keys.SigningKey | None = None
        self._signer_lock = threading.Lock()

    def signing_key(self, *, create: bool = True) -> keys.SigningKey:
        """The checkpoint signing key, ready to sign: the installation's key (created with mode 0600 on the
        installation's first start), with the signer's state checked (``signer_state.SignerGuard``).

        Raises ``SignerRefused`` when the key file is not the installation's or the database's log does not
        extend what this key signed. ``create=False``: only read the key file (no check, nothing created).
        """
        if self._signing is not None:
            return self._signing
        if not create or self.read_only:
            return keys.signing_key(self.settings, create=False)
        with self._signer_lock:
            if self._signing is None:
                self._signing = self._start_signer()
        return self._signing

    def _start_signer(self) -> keys.SigningKey:
        conn = self.conns.get()
        recorded = keys.installation_key(conn)
        path = keys.default_signing_key_path(self.settings)
        if recorded is not None and not path.exists():
            raise SignerRefused(
                f"signing_key_file {path} does not exist, and this installation signs with key "
                f"{_key_id(recorded)}: mount the installation's key file there (every replica shares one "
                "key) instead of letting a new key be created"
            )
        key = keys.signing_key(self.settings, name_hint=f"spintrail-{self.installation_id[:8]}")
        if recorded is not None and recorded != key.verifier:
            raise SignerRefused(
                f"signing_key_file {key.path} holds key {_key_id(key.verifier)}, but this installation signs "
                f"with key {_key_id(recorded)}: give every replica the installation's key file"
            )
        state = signer_state.state_for(self.settings, key.verifier, self.origin)
        guard = signer_state.SignerGuard(state)
        guard.start(conn, first_use=recorded is None, join=self.settings.signer_join)  # the state exists now
        if recorded is None:
            winner = keys.record_installation_key(conn, key.verifier)
            if winner != key.verifier:  # another replica recorded its key first
                raise SignerRefused(
                    f"signing_key_file {key.path} holds key {_key_id(key.verifier)}, but this installation "
                    f"signs with key {_key_id(winner)}: give every replica the installation's key file"
                )
        self.log.guard = guard
        return key

    def accept_rollback(self, to: int, *, by: str = "cli") -> dict[str, Any]:
        """Accept a restore from an older backup (``integrity accept-rollback``): recorded in the log, and
        the signer's own head (outside the database) restarts at the accepted log, action included, so the
        next signature extends it. Without the key file here the head is left as it is (``signer_state``
        is then ``None``): run this where the signer runs."""
        outcome = self.log.accept_rollback(to, by=by)
        try:
            key = keys.signing_key(self.settings, create=False)
        except keys.KeyFileError:
            outcome["signer_state"] = None
            return outcome
        head = integrity.load_state(self.conns.get())
        state = signer_state.state_for(self.settings, key.verifier, self.origin)
        state.accept(head.size, head.root)
        self._signing = None  # the next signature starts the signer again from the accepted head
        self.log.guard = None
        outcome["signer_state"] = str(state.path)
        return outcome

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


def _key_id(verifier: str) -> str:
    """``name+id`` of a verifier key (enough to tell keys apart in a message)."""
    return "+".join(verifier.split("+")[:2])


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
