"""The signer's own memory of what it signed, kept outside the database: it never signs a history it did
not extend.

Whoever can write to the database could otherwise wipe or rewrite the tamper-evident log and have the
server sign the new history. So the process holding the signing key keeps the last tree head it signed
(size, root, the Merkle peaks at that size, the signed note) in a file of ``signer_state_dir`` named after
the key (default: the signing key file's directory), and reads ``checkpoint_dir/latest.txt`` too when
``checkpoint_dir`` is set; the newer of the two counts. Before it signs, ``SignerGuard``:

* at start (``start``): recomputes the root of the database's first *N* leaves from their stored hashes
  and compares it with the head of size *N*; refuses when the log is smaller than *N* (a restore from an
  older backup: ``spintrail integrity accept-rollback --to SIZE`` resets the head, through
  ``SignerState.accept``), when the roots differ, or when the key exists, the log is not empty and the
  state is missing;
* at every signature (``extend``): extends its own peaks with the leaves added since, and signs only when
  the database's recorded head is exactly that extension.

A refusal is a ``SignerRefused``; ``spintrail serve`` exits with status 3 on it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spintrail import checkpoint as notes
from spintrail import dbutil, merkle
from spintrail.settings import Settings

log = logging.getLogger(__name__)

#: Exit status of ``spintrail serve`` when the signer refuses to start.
EXIT_REFUSED = 3


class SignerRefused(RuntimeError):
    """The signer will not sign this database's log; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Head:
    """A signed tree head as the signer remembers it."""

    size: int
    root: bytes
    signed_at: int
    source: str
    #: The Merkle peaks at ``size`` (``None`` when only the root is known).
    peaks: tuple[bytes, ...] | None = None


def _key_label(verifier: str) -> str:
    name, key_id = verifier.split("+")[:2]
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}-{key_id}")


class SignerState:
    """The head file of one signing key in ``directory``, and ``checkpoint_dir``'s latest checkpoint."""

    def __init__(
        self, directory: Path, verifier: str, origin: str, checkpoint_dir: Path | None = None
    ) -> None:
        self.directory = directory
        self.verifier = verifier
        self.origin = origin
        self.checkpoint_dir = checkpoint_dir
        self.path = directory / f"spintrail-signer-{_key_label(verifier)}.json"

    def load(self) -> Head | None:
        """The newest head known outside the database, or ``None``."""
        heads = [h for h in (self._from_file(), self._from_checkpoint_dir()) if h is not None]
        return max(heads, key=lambda h: (h.signed_at, h.size)) if heads else None

    def _from_file(self) -> Head | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SignerRefused(f"the signer's state file {self.path} cannot be read: {exc}") from None
        if data.get("origin") != self.origin:
            raise SignerRefused(
                f"the signer's state {self.path} is for log {data.get('origin')!r}, but the database's log "
                f"is {self.origin!r}: either this key already signs another installation's log (give each "
                "installation its own signing_key_file), or the database was replaced or its installation "
                "id changed"
            )
        peaks = data.get("peaks")
        return Head(
            size=int(data["size"]),
            root=base64.b64decode(data["root"]),
            signed_at=int(data["signed_at"]),
            source=str(self.path),
            peaks=tuple(base64.b64decode(p) for p in peaks) if peaks is not None else None,
        )

    def _from_checkpoint_dir(self) -> Head | None:
        if self.checkpoint_dir is None:
            return None
        latest = self.checkpoint_dir / "latest.txt"
        try:
            note = latest.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SignerRefused(f"cannot read {latest}: {exc}") from None
        try:
            cp = notes.open_checkpoint(note, self.verifier)
        except notes.CheckpointError:
            return None  # signed by another key (an earlier installation): not this signer's head
        if cp.origin != self.origin:
            return None
        from spintrail.integrity import checkpoint_time

        return Head(cp.size, cp.root, checkpoint_time(cp) or 0, str(latest))

    def save(self, tree: merkle.CompactRange, signed_at: int, note: str = "") -> None:
        """Remember a signed head (durably: written to a new file, synced, then renamed over the old)."""
        self._write(
            {
                "origin": self.origin,
                "verifier_key": self.verifier,
                "size": tree.size,
                "root": base64.b64encode(tree.root()).decode("ascii"),
                "peaks": [base64.b64encode(p).decode("ascii") for p in tree.peaks],
                "signed_at": signed_at,
                "note": note,
            }
        )

    def accept(self, size: int, root: bytes) -> None:
        """Make (``size``, ``root``) the head the next signature must extend, whatever was signed before.

        For an explicit, recorded decision such as accepting a restore from an older backup."""
        self._write(
            {
                "origin": self.origin,
                "verifier_key": self.verifier,
                "size": size,
                "root": base64.b64encode(root).decode("ascii"),
                "peaks": None,
                "signed_at": int(time.time() * 1000),
                "note": "",
                "accepted": True,
            }
        )

    def _write(self, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fp:
            json.dump(data, fp, indent=1)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def state_for(settings: Settings, verifier: str, origin: str) -> SignerState:
    """The signer state of ``settings`` (``signer_state_dir``, ``checkpoint_dir``) for one key and log;
    ``state_for(...).accept(size, root)`` resets the head the next signature must extend."""
    from spintrail import keys

    return SignerState(keys.signer_state_dir(settings), verifier, origin, settings.checkpoint_dir)


def _rollback_message(head: Head, size: int) -> str:
    return (
        f"the database's tamper-evident log holds {size} leaves, but this signer already signed a head of "
        f"size {head.size} ({head.source}): the log was truncated or the database restored from an older "
        f"backup. If that restore is intended, accept it with `spintrail integrity accept-rollback --to "
        f"{size}`"
    )


def _leaf_hashes(conn: Any, start: int, end: int, *, batch: int = 20000) -> list[bytes]:
    """Stored leaf hashes of leaves ``start`` to ``end - 1``, in order (fewer when leaves are missing)."""
    out: list[bytes] = []
    pos = start
    while pos < end:
        rows = dbutil.rows(
            conn,
            "SELECT idx, leaf_hash FROM integrity_leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
            (pos, min(end, pos + batch)),
        )
        for idx, lh in rows:
            if int(idx) != pos:
                return out
            out.append(dbutil.as_bytes(lh))
            pos += 1
        if not rows or len(out) < pos - start:
            return out
    return out


class SignerGuard:
    """Checks the database's log against the signer's head before each signature."""

    def __init__(self, state: SignerState) -> None:
        self.state = state
        self._tree: merkle.CompactRange | None = None

    def start(self, conn: Any, *, first_use: bool, join: bool = False) -> None:
        """Check the database's whole log against the remembered head; raise ``SignerRefused`` if it is
        not an extension. ``join`` (setting ``signer_join``): a missing state of a known key may start at the
        newest checkpoint in the database that the key signed (never when there is none). ``first_use``: this
        installation never recorded a signing key (it predates the
        signer's state), so a missing state is started from the log as it is, once."""
        from spintrail.integrity import load_state

        db = load_state(conn)
        head = self.state.load()
        adopted = head is None
        if head is None:
            if db.size == 0:  # a new log: the state starts now, before any event (a crash keeps it)
                self._tree = merkle.CompactRange()
                self.state.save(self._tree, int(time.time() * 1000))
                return
            joined = self._newest_stored(conn) if join and not first_use else None
            if joined is not None:
                log.warning(
                    "integrity: no signer state for a log of %d leaves: joining at the installation's newest "
                    "signed checkpoint (%s, size %d), as signer_join allows; state at %s",
                    db.size,
                    joined.source,
                    joined.size,
                    self.state.path,
                )
            elif not first_use:
                raise SignerRefused(
                    f"the signer's state {self.state.path} is missing (nor is there a checkpoint of this key "
                    f"in checkpoint_dir) while the database's log already holds {db.size} leaves: this "
                    "signer cannot tell whether the log is the one it signed. Restore signer_state_dir (it "
                    "must persist, e.g. a volume), or, after `spintrail verify --key ... --checkpoints ...` "
                    f"holds, accept the log with `spintrail integrity accept-rollback --to {db.size}`"
                )
            log.warning(
                "integrity: no signer state yet for a log of %d leaves: starting it at %s",
                db.size,
                self.state.path,
            )
            head = self._newest_stored(conn) or Head(0, merkle.CompactRange().root(), 0, "an empty log")
        if db.size < head.size:
            raise SignerRefused(_rollback_message(head, db.size))
        hashes = _leaf_hashes(conn, 0, head.size)
        if len(hashes) < head.size:
            raise SignerRefused(
                f"the database's log is missing leaf {len(hashes)} below the signed head of size {head.size} "
                f"({head.source}): leaves were removed outside spintrail"
            )
        tree = merkle.CompactRange()
        tree.extend(hashes)
        if tree.root() != head.root:
            raise SignerRefused(
                f"the database's log is not an extension of the head this signer signed ({head.source}: "
                f"size {head.size}, root {base64.b64encode(head.root).decode()}); its first {head.size} "
                f"leaves give root {base64.b64encode(tree.root()).decode()}: the log was rewritten or "
                "replaced. Refusing to sign it."
            )
        self._tree = tree
        self.extend(conn, db.size, db.root)
        if adopted:
            self.state.save(self._tree, int(time.time() * 1000))  # the state starts here

    def _newest_stored(self, conn: Any) -> Head | None:
        """The newest checkpoint stored in the database that this key signed for this log (an installation
        from before the signer's state: the log must at least extend what it signed)."""
        from spintrail.integrity import checkpoint_time

        for cp_id, note in dbutil.rows(conn, "SELECT id, note FROM integrity_checkpoints ORDER BY id DESC"):
            try:
                cp = notes.open_checkpoint(note, self.state.verifier, origin=self.state.origin)
            except notes.CheckpointError:
                continue
            return Head(cp.size, cp.root, checkpoint_time(cp) or 0, f"stored checkpoint #{cp_id}")
        return None

    @property
    def tree(self) -> merkle.CompactRange:
        if self._tree is None:
            raise SignerRefused("the signer was not started: call SignerGuard.start first")
        return self._tree

    def extend(self, conn: Any, size: int, root: bytes) -> merkle.CompactRange:
        """The signer's tree extended to the database's head (``size``, ``root``), which it must equal.
        Call in the transaction that signs (the log cannot grow meanwhile)."""
        tree = self.tree
        if size < tree.size:
            raise SignerRefused(_rollback_message(Head(tree.size, tree.root(), 0, "in memory"), size))
        extended = merkle.CompactRange.from_peaks(tree.size, list(tree.peaks))
        added = _leaf_hashes(conn, tree.size, size)
        extended.extend(added)
        if len(added) != size - tree.size or extended.root() != root:
            raise SignerRefused(
                f"the database's log (size {size}) is not an extension of the last head this signer signed "
                f"(size {tree.size}): leaves were changed or removed outside spintrail. Refusing to sign it."
            )
        return extended

    def signed(self, tree: merkle.CompactRange, signed_at: int, note: str) -> None:
        """Remember a head just signed."""
        self.state.save(tree, signed_at, note)
        self._tree = tree
