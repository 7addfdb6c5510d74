"""Installation keys: the installation id, the redaction key (HMAC of secrets) and the checkpoint signing key.

* The installation id and, unless ``redaction_key_file`` is set, the redaction key are generated on first
  start and kept in the database (table ``trust_meta``). Whoever can read the database can therefore test
  guesses of low-entropy secrets against their hashes; a key file on another volume avoids that.
* The Ed25519 signing key lives in a file (``signing_key_file``, default beside the SQLite file), created
  with mode 0600 on first start, so that a copy of the database alone cannot forge checkpoints. Its public
  half (the *verifier key*) is what auditors are given (``spintrail keys show``).

No key is ever logged.
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spintrail import checkpoint, dbutil, private
from spintrail.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS: dict[str, list[tuple[int, str]]] = {
    "sqlite": [(1, "CREATE TABLE trust_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")],
    "postgresql": [(1, "CREATE TABLE trust_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)")],
}

REDACTION_KEY_BYTES = 32


class KeyFileError(RuntimeError):
    """A key file cannot be read or created; the message says which file and what to do."""


def _meta(conn: Any, name: str, make: bytes) -> bytes:
    """The value stored under ``name``, storing ``make`` first when there is none (race-free)."""
    row = dbutil.one(conn, "SELECT value FROM trust_meta WHERE name = ?", (name,))
    if row is None:
        if dbutil.is_sqlite(conn):
            dbutil.execute(conn, "INSERT OR IGNORE INTO trust_meta(name, value) VALUES (?, ?)", (name, make))
        else:
            dbutil.execute(
                conn,
                "INSERT INTO trust_meta(name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (name, make),
            )
        row = dbutil.one(conn, "SELECT value FROM trust_meta WHERE name = ?", (name,))
    return dbutil.as_bytes(row[0])


def installation_id(conn: Any, *, create: bool = True) -> str | None:
    """This installation's id (a UUID generated on first start; ``None`` when there is none and not
    ``create``)."""
    if not create:
        row = dbutil.one(conn, "SELECT value FROM trust_meta WHERE name = ?", ("installation_id",))
        return dbutil.as_bytes(row[0]).decode() if row else None
    return _meta(conn, "installation_id", uuid.uuid4().hex.encode()).decode()


def redaction_key(conn: Any, settings: Settings, *, create: bool = True) -> bytes:
    """The redaction key: from ``redaction_key_file`` (created when missing) or the database. When not
    ``create`` and there is none yet, a throw-away key (nothing is stored, nothing is redacted with it)."""
    if not create:
        path = settings.redaction_key_file
        if path is not None and path.exists():
            return _key_file(path)
        query = "SELECT value FROM trust_meta WHERE name = ?"
        row = None if path else dbutil.one(conn, query, ("redaction_key",))
        return dbutil.as_bytes(row[0]) if row else secrets.token_bytes(REDACTION_KEY_BYTES)
    if settings.redaction_key_file is not None:
        return _key_file(settings.redaction_key_file)
    return _meta(conn, "redaction_key", secrets.token_bytes(REDACTION_KEY_BYTES))


def _key_file(path: Path) -> bytes:
    try:
        if path.exists():
            data = path.read_bytes().strip()
            try:
                key = bytes.fromhex(data.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                key = data
            if len(key) < 16:
                raise KeyFileError(f"redaction key file {path} holds {len(key)} bytes: it needs at least 16")
            return key
        key = secrets.token_bytes(REDACTION_KEY_BYTES)
        _write_private(path, key.hex() + "\n")
        log.info("created redaction key file %s", path)
        return key
    except OSError as exc:
        raise KeyFileError(f"cannot read or create the redaction key file {path}: {exc}") from None


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (never overwriting) and write ``text``."""
    private.make_dirs(path.parent)
    with private.open_file(path, "x") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())


def default_signing_key_path(settings: Settings) -> Path:
    if settings.signing_key_file is not None:
        return settings.signing_key_file
    db = settings.database
    if db.startswith(("postgresql://", "postgres://")):
        return Path("spintrail-signing.key")
    from spintrail.store.sqlite import sqlite_path

    path = sqlite_path(db)
    if path == ":memory:":
        return Path("spintrail-signing.key")
    return Path(path + ".signing-key")


@dataclass(frozen=True)
class SigningKey:
    """The checkpoint signer (secret) and its verifier key (public), and where the signer is kept."""

    signer: str
    verifier: str
    path: Path

    @property
    def name(self) -> str:
        return self.verifier.split("+", 1)[0]


def signing_key(settings: Settings, *, name_hint: str = "spintrail", create: bool = True) -> SigningKey:
    """Load the signing key file, creating a new key (mode 0600) on first start when ``create``."""
    path = default_signing_key_path(settings)
    try:
        if path.exists():
            signer = path.read_text().strip()
        elif create:
            signer, _ = checkpoint.generate_signer_key(name_hint)
            _write_private(path, signer + "\n")
            log.info("created checkpoint signing key %s", path)
        else:
            raise KeyFileError(
                f"no signing key at {path}: start `spintrail serve` once, or set signing_key_file"
            )
    except FileExistsError:  # another process created it meanwhile
        signer = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read or create the signing key file {path}: {exc}") from None
    try:
        verifier = verifier_of(signer)
    except checkpoint.CheckpointError as exc:
        raise KeyFileError(f"signing key file {path} is not a valid signer key: {exc}") from None
    return SigningKey(signer=signer, verifier=verifier, path=path)


#: ``trust_meta`` entry holding the verifier key of the installation's signing key (recorded on first use).
INSTALLATION_KEY = "signing_verifier_key"


def installation_key(conn: Any) -> str | None:
    """The verifier key this installation signs with, as recorded on first use (``None``: not yet)."""
    row = dbutil.one(conn, "SELECT value FROM trust_meta WHERE name = ?", (INSTALLATION_KEY,))
    return dbutil.as_bytes(row[0]).decode() if row else None


def record_installation_key(conn: Any, verifier: str) -> str:
    """Record ``verifier`` as the installation's key unless one is recorded; returns the recorded one."""
    return _meta(conn, INSTALLATION_KEY, verifier.encode()).decode()


def signer_state_dir(settings: Settings) -> Path:
    """Where the signer keeps its last signed head: ``signer_state_dir``, else the key file's directory."""
    if settings.signer_state_dir is not None:
        return settings.signer_state_dir
    return default_signing_key_path(settings).absolute().parent


def verifier_of(signer: str) -> str:
    """The verifier (public) key string of a signer key string."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    parts = signer.split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise checkpoint.CheckpointError("expected PRIVATE+KEY+<name>+<key id>+<base64 seed>")
    name, key_id, material = parts[2:]
    raw = base64.b64decode(material)
    if len(raw) != 33 or raw[0] != 1:
        raise checkpoint.CheckpointError("expected 0x01 followed by a 32-byte Ed25519 seed")
    public = Ed25519PrivateKey.from_private_bytes(raw[1:]).public_key().public_bytes_raw()
    verifier = f"{name}+{key_id}+" + base64.b64encode(b"\x01" + public).decode("ascii")
    checkpoint._parse_verifier_key(verifier)  # checks the key id matches the key
    return verifier
