"""Signed checkpoints: C2SP signed-note / tlog-checkpoint format, published vectors, tamper detection."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from spintrail.checkpoint import (
    Checkpoint,
    CheckpointError,
    generate_signer_key,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from spintrail.merkle import leaf_hash, root_from_leaf_hashes

# Reference key pair, text and signature of golang.org/x/mod/sumdb/note (golang/mod sumdb/note/note_test.go,
# commit 02c991387e35f9e4c0a9b7ce137717055f8d716d). Ed25519 is deterministic, so signing must reproduce the
# published note byte for byte.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# A real Go checksum-database checkpoint and its public key, from transparency-dev/formats
# log/note_test.go (commit 5242c17862d31acd165afafa140ecc973a621469).
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n"
    "6476701\n"
    "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n"
    "\n"
    "\u2014 sum.golang.org "
    "Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95949rj4nPRYfvimWEPWL+o3GeoWwOoAw=\n"
)

# The example checkpoint of the C2SP tlog-checkpoint specification (C2SP/C2SP tlog-checkpoint.md); its key is
# not published, so it is only used to check that the layout parses up to the signature check.
C2SP_EXAMPLE = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/behind-the-sofa "
    "Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)

ORIGIN = "spintrail.example/audit-log"


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_signer_key(ORIGIN)


def _checkpoint(size: int = 7) -> Checkpoint:
    hashes = [leaf_hash(str(i).encode()) for i in range(size)]
    return Checkpoint(origin=ORIGIN, size=size, root=root_from_leaf_hashes(hashes))


# ----------------------------------------------------------------------------------- published vectors


def test_signing_reproduces_the_published_go_note_byte_for_byte() -> None:
    assert sign_note(TEXT, PETER_SKEY) == TEXT + "\n" + PETER_SIG


def test_published_go_note_verifies_and_returns_its_text() -> None:
    assert open_note(TEXT + "\n" + PETER_SIG, PETER_VKEY) == TEXT


def test_each_key_verifies_its_own_signature_in_a_cosigned_note() -> None:
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(note, PETER_VKEY) == TEXT
    assert open_note(note, ENOCH_VKEY) == TEXT


def test_published_go_note_with_one_changed_letter_fails() -> None:
    note = (TEXT + "\n" + PETER_SIG).replace("cryptography", "cryptographY")
    with pytest.raises(CheckpointError, match=r"invalid signature for key PeterNeumann\+c74f20a3"):
        open_note(note, PETER_VKEY)


def test_real_go_checksum_database_checkpoint_opens() -> None:
    cp = open_checkpoint(SUMDB_NOTE, SUMDB_VKEY, origin="go.sum database tree")
    assert cp.origin == "go.sum database tree"
    assert cp.size == 6476701
    assert cp.root == base64.b64decode("mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=")
    assert cp.extensions == ()


def test_real_checkpoint_with_another_size_fails() -> None:
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_checkpoint(SUMDB_NOTE.replace("6476701", "6476702"), SUMDB_VKEY)


def test_spec_example_layout_parses_up_to_the_unknown_key() -> None:
    _, other_vkey = generate_signer_key("example.com/behind-the-sofa")
    with pytest.raises(CheckpointError, match=re.escape("no signature by key example.com/behind-the-sofa")):
        open_checkpoint(C2SP_EXAMPLE, other_vkey)


def test_key_id_is_sha256_of_name_newline_type_and_public_key() -> None:
    name, key_id, material = PETER_VKEY.split("+", 2)
    raw = base64.b64decode(material)
    assert raw[0] == 0x01 and len(raw) == 33
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == key_id


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_returns_the_same_checkpoint(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    cp = _checkpoint()
    assert open_checkpoint(sign_checkpoint(cp, skey), vkey, origin=ORIGIN) == cp


def test_round_trip_with_extension_lines_and_empty_tree(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    cp = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest(), ("time 1718455800", "note two"))
    assert open_checkpoint(sign_checkpoint(cp, skey), vkey) == cp


def test_signed_note_layout_matches_the_specification(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    cp = _checkpoint(5)
    note = sign_checkpoint(cp, skey)
    body, sig_line = note.split("\n\n")
    assert body + "\n" == f"{ORIGIN}\n5\n{base64.b64encode(cp.root).decode()}\n"
    assert sig_line.startswith(f"\u2014 {ORIGIN} ") and sig_line.endswith("\n") and sig_line.count("\n") == 1
    blob = base64.b64decode(sig_line.split(" ")[2])
    assert len(blob) == 4 + 64
    assert blob[:4].hex() == vkey.split("+")[1]


def test_generated_keys_have_the_documented_string_formats(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    s_parts, v_parts = skey.split("+", 4), vkey.split("+", 2)
    assert s_parts[:3] == ["PRIVATE", "KEY", ORIGIN] and v_parts[0] == ORIGIN
    assert s_parts[3] == v_parts[1] and len(v_parts[1]) == 8
    assert base64.b64decode(s_parts[4])[0] == 0x01 and len(base64.b64decode(s_parts[4])) == 33


# ------------------------------------------------------------------------------------------- tampering


def test_any_changed_byte_in_body_or_signature_is_rejected(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    note = sign_checkpoint(_checkpoint(), skey)
    sig_start = note.index("\n\n") + 2 + len(f"\u2014 {ORIGIN} ")
    rejected = 0
    for pos in [*range(note.index("\n\n")), *range(sig_start, len(note) - 1)]:
        ch = note[pos]
        if ch == "\n":
            continue
        replacement = "A" if ch != "A" else "B"
        with pytest.raises(CheckpointError):
            open_checkpoint(note[:pos] + replacement + note[pos + 1 :], vkey)
        rejected += 1
    assert rejected > 100


def test_another_key_with_the_same_name_is_an_unknown_key(keys: tuple[str, str]) -> None:
    skey, _ = keys
    _, other_vkey = generate_signer_key(ORIGIN)
    with pytest.raises(CheckpointError, match="unknown key"):
        open_checkpoint(sign_checkpoint(_checkpoint(), skey), other_vkey)


def test_signature_swapped_in_from_another_key_is_invalid(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    other_skey, _ = generate_signer_key(ORIGIN)
    note = sign_checkpoint(_checkpoint(), skey)
    forged = sign_checkpoint(_checkpoint(8), other_skey)
    # keep our key id, but carry the other key's signature bytes
    ours, theirs = note.rsplit(" ", 1)[1], forged.rsplit(" ", 1)[1]
    blob = base64.b64decode(ours)[:4] + base64.b64decode(theirs)[4:]
    tampered = forged.rsplit(" ", 1)[0] + " " + base64.b64encode(blob).decode() + "\n"
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_checkpoint(tampered, vkey)


def test_wrong_origin_is_rejected(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    note = sign_checkpoint(_checkpoint(), skey)
    expected = re.escape(f"origin {ORIGIN!r} is not the expected 'other.example/log'")
    with pytest.raises(CheckpointError, match=expected):
        open_checkpoint(note, vkey, origin="other.example/log")


def test_unknown_cosignatures_are_ignored(keys: tuple[str, str]) -> None:
    skey, vkey = keys
    note = sign_checkpoint(_checkpoint(), skey)
    witness = "\u2014 witness.example/w1 " + base64.b64encode(b"\x01\x02\x03\x04" + b"x" * 64).decode() + "\n"
    assert open_checkpoint(note + witness, vkey) == _checkpoint()


# ------------------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (TEXT, "no blank line"),
        (TEXT + "\n", "signature block missing"),
        (TEXT + "\n" + PETER_SIG[:-1], "not newline-terminated"),
        ("\x01" + TEXT + "\n" + PETER_SIG, "control characters"),
        (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"), "bad signature line"),
        (TEXT + "\n" + PETER_SIG + "Unexpected line.\n", "without the em dash"),
        (TEXT + "\n" + PETER_SIG.replace("\u2014", "-"), "without the em dash"),
        (TEXT + "\n" + PETER_SIG * 101, "more than 100 signatures"),
        (TEXT + "\n" + PETER_SIG.replace("x08go", "x08g!"), "not valid base64"),
        (b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), "not valid UTF-8"),
    ],
)
def test_malformed_notes_are_rejected_with_a_reason(note: str | bytes, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        open_note(note, PETER_VKEY)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("only-origin\n5\n", "needs origin, size and root"),
        ("\n5\n" + base64.b64encode(b"\x00" * 32).decode() + "\n", "empty origin"),
        (f"{ORIGIN}\n05\n" + base64.b64encode(b"\x00" * 32).decode() + "\n", "not a decimal number"),
        (f"{ORIGIN}\n-1\n" + base64.b64encode(b"\x00" * 32).decode() + "\n", "not a decimal number"),
        (f"{ORIGIN}\n5\n" + base64.b64encode(b"\x00" * 31).decode() + "\n", "root hash is 31 bytes"),
        (f"{ORIGIN}\n5\nnot base64!\n", "not valid base64"),
    ],
)
def test_malformed_checkpoint_bodies_are_rejected_even_when_signed(
    keys: tuple[str, str], body: str, reason: str
) -> None:
    skey, vkey = keys
    with pytest.raises(CheckpointError, match=reason):
        open_checkpoint(sign_note(body, skey), vkey)


@pytest.mark.parametrize(
    ("vkey", "reason"),
    [
        ("PeterNeumann+c74f20a3", "expected <name>"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key id does not match"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 lowercase hex"),
        ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "unsupported algorithm"),
        ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==", "canonical base64"),
        (
            "PeterNeumann+c74f20a3+" + base64.b64encode(base64.b64decode(PETER_VKEY[22:]) + b"\0").decode(),
            "expected 33 bytes of key material, got 34",
        ),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "invalid key name"),
    ],
)
def test_malformed_verifier_keys_are_rejected(vkey: str, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        open_note(TEXT + "\n" + PETER_SIG, vkey)


def test_malformed_signer_keys_are_rejected() -> None:
    with pytest.raises(CheckpointError, match="PRIVATE\\+KEY"):
        sign_note(TEXT, PETER_VKEY)
    with pytest.raises(CheckpointError, match="key id does not match"):
        sign_note(TEXT, PETER_SKEY.replace("c74f20a3", "c74f20a4"))


def test_invalid_checkpoints_cannot_be_built() -> None:
    root = b"\x00" * 32
    with pytest.raises(CheckpointError, match="non-empty"):
        Checkpoint("", 1, root)
    with pytest.raises(CheckpointError, match="one line"):
        Checkpoint("a\nb", 1, root)
    with pytest.raises(CheckpointError, match="non-negative integer"):
        Checkpoint(ORIGIN, -1, root)
    with pytest.raises(CheckpointError, match="32-byte hash, got 3 bytes"):
        Checkpoint(ORIGIN, 1, b"abc")
    with pytest.raises(CheckpointError, match="extension lines"):
        Checkpoint(ORIGIN, 1, root, ("",))
    with pytest.raises(CheckpointError, match="invalid key name"):
        generate_signer_key("has space")
