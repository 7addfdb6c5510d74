"""Signed checkpoints: the log's (size, root hash) in the C2SP ``tlog-checkpoint`` format, wrapped in a C2SP
``signed-note`` with an Ed25519 signature, so anyone holding the public key can check a published tree head
offline.

Note layout (c2sp.org/signed-note, c2sp.org/tlog-checkpoint)::

    <origin>\\n<tree size>\\n<base64 root hash>\\n[<extension line>\\n ...]
    \\n
    — <key name> <base64(4-byte key ID || 64-byte Ed25519 signature)>\\n

The signature covers the note text (everything before the blank line, final newline included). The key ID is
the first four bytes of ``SHA-256(key name || "\\n" || 0x01 || 32-byte public key)``. Keys are exchanged as
strings in the format used by ``golang.org/x/mod/sumdb/note``:

* verifier key: ``<name>+<8 hex digits key ID>+<base64(0x01 || public key)>``
* signer key: ``PRIVATE+KEY+<name>+<8 hex digits key ID>+<base64(0x01 || 32-byte seed)>``

Signatures by keys other than the given verifier key are ignored (witness cosignatures, rotated keys); a
failing signature by the given key rejects the whole note, as does a note with no signature by it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "generate_signer_key",
    "open_checkpoint",
    "open_note",
    "sign_checkpoint",
    "sign_note",
]

_ALG_ED25519 = 0x01
_EM_DASH = "\u2014"
_SIG_PREFIX = _EM_DASH + " "
_MAX_SIGNATURES = 100
_SIZE_LINE = re.compile(r"0|[1-9][0-9]*")
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_ROOT_SIZE = 32


class CheckpointError(ValueError):
    """A checkpoint, note or key string is malformed, unsigned by the expected key, or badly signed."""


@dataclass(frozen=True)
class Checkpoint:
    """A log's signed statement that its first ``size`` entries have Merkle root ``root``."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise CheckpointError("checkpoint origin must be a non-empty string")
        if _has_control(self.origin) or "\n" in self.origin:
            raise CheckpointError("checkpoint origin must be one line without control characters")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise CheckpointError(f"checkpoint size must be a non-negative integer, got {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != _ROOT_SIZE:
            got = f"{len(self.root)} bytes" if isinstance(self.root, bytes) else type(self.root).__name__
            raise CheckpointError(f"checkpoint root must be a {_ROOT_SIZE}-byte hash, got {got}")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("checkpoint extensions must be a tuple of strings")
        for line in self.extensions:
            if not isinstance(line, str) or not line or "\n" in line or _has_control(line):
                raise CheckpointError(f"checkpoint extension lines must be non-empty lines, got {line!r}")

    def body(self) -> str:
        """The note text this checkpoint is signed as."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)


# --------------------------------------------------------------------------------------------- keys


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 and ch != "\n" for ch in text)


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name) and not _has_control(name)


def _key_id(name: str, public_key: bytes) -> int:
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([_ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode_canonical(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True)
class _Verifier:
    name: str
    key_id: int
    public_key: Ed25519PublicKey

    @property
    def label(self) -> str:
        return f"{self.name}+{self.key_id:08x}"


@dataclass(frozen=True)
class _Signer:
    name: str
    key_id: int
    private_key: Ed25519PrivateKey


def _parse_verifier_key(vkey: str) -> _Verifier:
    if not isinstance(vkey, str):
        raise CheckpointError("malformed verifier key: expected a string")
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise CheckpointError("malformed verifier key: expected <name>+<key id>+<base64 key>")
    name, key_id_hex, key_b64 = parts
    if not _valid_name(name):
        raise CheckpointError(f"malformed verifier key: invalid key name {name!r}")
    if not _KEY_ID.fullmatch(key_id_hex):
        raise CheckpointError("malformed verifier key: key id must be 8 lowercase hex digits")
    raw = _b64decode_canonical(key_b64, "verifier key material")
    if len(raw) != 33:
        raise CheckpointError(f"malformed verifier key: expected 33 bytes of key material, got {len(raw)}")
    if raw[0] != _ALG_ED25519:
        raise CheckpointError(f"malformed verifier key: unsupported algorithm {raw[0]:#04x} (only Ed25519)")
    key_id = int(key_id_hex, 16)
    if _key_id(name, raw[1:]) != key_id:
        raise CheckpointError("malformed verifier key: key id does not match the key")
    return _Verifier(name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:]))


def _parse_signer_key(skey: str) -> _Signer:
    if not isinstance(skey, str):
        raise CheckpointError("malformed signer key: expected a string")
    parts = skey.split("+", 4)
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise CheckpointError("malformed signer key: expected PRIVATE+KEY+<name>+<key id>+<base64 seed>")
    name, key_id_hex, key_b64 = parts[2:]
    if not _valid_name(name):
        raise CheckpointError(f"malformed signer key: invalid key name {name!r}")
    if not _KEY_ID.fullmatch(key_id_hex):
        raise CheckpointError("malformed signer key: key id must be 8 lowercase hex digits")
    raw = _b64decode_canonical(key_b64, "signer key material")
    if len(raw) != 33 or raw[0] != _ALG_ED25519:
        raise CheckpointError("malformed signer key: expected 0x01 followed by a 32-byte Ed25519 seed")
    private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    key_id = int(key_id_hex, 16)
    if _key_id(name, private_key.public_key().public_bytes_raw()) != key_id:
        raise CheckpointError("malformed signer key: key id does not match the key")
    return _Signer(name, key_id, private_key)


def generate_signer_key(name: str) -> tuple[str, str]:
    """A new Ed25519 key pair named ``name``: ``(signer key string, verifier key string)``.

    The signer key is secret; the verifier key is what auditors and witnesses are given.
    """
    if not isinstance(name, str) or not _valid_name(name):
        raise CheckpointError(f"invalid key name {name!r}: must be non-empty, without spaces or '+'")
    private_key = Ed25519PrivateKey.generate()
    seed = private_key.private_bytes_raw()
    public = private_key.public_key().public_bytes_raw()
    key_id = f"{_key_id(name, public):08x}"
    skey = f"PRIVATE+KEY+{name}+{key_id}+" + base64.b64encode(bytes([_ALG_ED25519]) + seed).decode("ascii")
    vkey = f"{name}+{key_id}+" + base64.b64encode(bytes([_ALG_ED25519]) + public).decode("ascii")
    return skey, vkey


# --------------------------------------------------------------------------------------------- notes


def sign_note(text: str, signer_key: str) -> str:
    """Sign ``text`` (non-empty, ending in a newline) and return the complete signed note."""
    signer = _parse_signer_key(signer_key)
    if not isinstance(text, str) or not text.endswith("\n") or text == "\n":
        raise CheckpointError("malformed note: text must be non-empty and end with a newline")
    if _has_control(text):
        raise CheckpointError("malformed note: text contains control characters")
    signature = signer.private_key.sign(text.encode("utf-8"))
    blob = signer.key_id.to_bytes(4, "big") + signature
    return f"{text}\n{_SIG_PREFIX}{signer.name} {base64.b64encode(blob).decode('ascii')}\n"


def open_note(note: str | bytes, verifier_key: str) -> str:
    """Verify ``note`` against ``verifier_key`` and return its text; raises :class:`CheckpointError`."""
    verifier = _parse_verifier_key(verifier_key)
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError("malformed note: not valid UTF-8") from exc
    if not isinstance(note, str):
        raise CheckpointError("malformed note: expected text")
    if _has_control(note):
        raise CheckpointError("malformed note: contains control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line between text and signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block or not sig_block.endswith("\n"):
        raise CheckpointError("malformed note: signature block missing or not newline-terminated")
    lines = sig_block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {_MAX_SIGNATURES} signatures")
    message = text.encode("utf-8")
    verified = False
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError(f"malformed note: signature line without the em dash: {line[:40]!r}")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _valid_name(name) or not b64 or " " in b64:
            raise CheckpointError(f"malformed note: bad signature line {line[:60]!r}")
        blob = _b64decode_canonical(b64, f"signature by {name!r}")
        if len(blob) < 5:
            raise CheckpointError(f"malformed note: signature by {name!r} is too short")
        key_id = int.from_bytes(blob[:4], "big")
        if name != verifier.name or key_id != verifier.key_id:
            continue  # another key (cosigner, rotated key): ignored, as the spec requires
        try:
            verifier.public_key.verify(blob[4:], message)
        except InvalidSignature as exc:
            raise CheckpointError(f"invalid signature for key {verifier.label}") from exc
        verified = True
    if not verified:
        raise CheckpointError(f"note has no signature by key {verifier.label} (unknown key)")
    return text


# --------------------------------------------------------------------------------------------- checkpoints


def sign_checkpoint(cp: Checkpoint, signer_key: str) -> str:
    """The full signed note for ``cp``."""
    if not isinstance(cp, Checkpoint):
        raise CheckpointError(f"expected a Checkpoint, got {type(cp).__name__}")
    return sign_note(cp.body(), signer_key)


def _parse_checkpoint_text(text: str) -> Checkpoint:
    """Parse a checkpoint note *text* (already verified) into a :class:`Checkpoint`."""
    if not text.endswith("\n"):
        raise CheckpointError("malformed checkpoint: text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("malformed checkpoint: needs origin, size and root hash lines")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise CheckpointError("malformed checkpoint: empty origin line")
    if not _SIZE_LINE.fullmatch(size_line):
        raise CheckpointError(f"malformed checkpoint: tree size {size_line[:30]!r} is not a decimal number")
    root = _b64decode_canonical(root_line, "checkpoint root hash")
    if len(root) != _ROOT_SIZE:
        raise CheckpointError(f"malformed checkpoint: root hash is {len(root)} bytes, expected {_ROOT_SIZE}")
    if any(not line for line in extensions):
        raise CheckpointError("malformed checkpoint: empty extension line")
    return Checkpoint(origin=origin, size=int(size_line), root=root, extensions=tuple(extensions))


def open_checkpoint(note: str | bytes, verifier_key: str, *, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note with ``verifier_key`` and parse it.

    With ``origin``, the checkpoint must also name that log. Raises :class:`CheckpointError` saying why
    (malformed note or checkpoint, unknown key, invalid signature, wrong origin).
    """
    cp = _parse_checkpoint_text(open_note(note, verifier_key))
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not the expected {origin!r}")
    return cp
