"""RFC 6962 / RFC 9162 Merkle tree hashing: roots, inclusion and consistency proofs, their verification, and
a compact range that keeps a running root of an append-only log in O(log n) memory.

Hashes are SHA-256 with domain separation: a leaf is ``SHA-256(0x00 || data)``, an interior node
``SHA-256(0x01 || left || right)``, and the empty tree ``SHA-256("")``. An unbalanced tree splits at the
largest power of two smaller than its size (RFC 6962 §2.1), so a lone right node is promoted, never
duplicated. Proof generation follows RFC 6962 §2.1.1 (PATH) and §2.1.2 (PROOF/SUBPROOF); verification
follows the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
#: Root hash of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hash(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__
        raise ValueError(f"{what} must be a {HASH_SIZE}-byte hash, got {got}")
    return bytes(value)


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """Running Merkle root of an append-only sequence of leaf hashes.

    Keeps only the roots of the perfect subtrees ("peaks") that make up the tree, largest first: one per set
    bit of the size, so at most 64 hashes for any realistic log. A store can persist ``size`` and ``peaks``
    and resume with :meth:`from_peaks` without reading its leaves again.
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._peaks: list[bytes] = []

    @classmethod
    def from_peaks(cls, size: int, peaks: Sequence[bytes]) -> CompactRange:
        """Resume from a persisted state; ``peaks`` must hold one hash per set bit of ``size``."""
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        expected = size.bit_count()
        if len(peaks) != expected:
            raise ValueError(f"a tree of size {size} has {expected} peaks, got {len(peaks)}")
        cr = cls()
        cr._size = size
        cr._peaks = [_check_hash(p, f"peak {i}") for i, p in enumerate(peaks)]
        return cr

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees covering the leaves, left (largest) to right."""
        return tuple(self._peaks)

    def append(self, leaf: bytes) -> None:
        """Append one leaf *hash* (see :func:`leaf_hash`)."""
        self._peaks.append(_check_hash(leaf, "leaf hash"))
        s = self._size
        while s & 1:
            right = self._peaks.pop()
            left = self._peaks.pop()
            self._peaks.append(node_hash(left, right))
            s >>= 1
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append several leaf hashes in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The RFC 6962 root hash of all leaves appended so far."""
        if not self._peaks:
            return EMPTY_ROOT
        h = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            h = node_hash(peak, h)
        return h


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash of a list of leaf hashes; the empty tree gives ``SHA-256("")``."""
    cr = CompactRange()
    cr.extend(hashes)
    return cr.root()


def _subtree_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    cr = CompactRange()
    for i in range(lo, hi):
        cr.append(hashes[i])
    return cr.root()


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 §2.1.1 audit path for leaf ``index`` in the tree of ``hashes``, ordered leaf to root."""
    n = len(hashes)
    if not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"leaf index {index!r} is outside a tree of size {n}")
    for i, h in enumerate(hashes):
        _check_hash(h, f"leaf hash {i}")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_subtree_root(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subtree_root(hashes, lo, lo + k))
            lo += k
            m -= k
    path.reverse()
    return path


def consistency_proof(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """RFC 6962 §2.1.2 proof that the first ``old_size`` leaves form a prefix of the tree of ``hashes``.

    Empty when ``old_size`` is 0 or equal to the tree size.
    """
    n = len(hashes)
    if not isinstance(old_size, int) or not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size!r} must be between 0 and the tree size {n}")
    for i, h in enumerate(hashes):
        _check_hash(h, f"leaf hash {i}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole = 0, n, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(_subtree_root(hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_subtree_root(hashes, lo, lo + k))
            lo += k
            m -= k
            whole = False
    if not whole:
        proof.append(_subtree_root(hashes, lo, hi))
    proof.reverse()
    return proof


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """True when ``proof`` shows leaf hash ``leaf`` is at ``index`` in the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Malformed input (sizes, hash lengths) gives False.
    """
    if not (_is_hash(leaf) and _is_hash(root) and all(_is_hash(p) for p in proof)):
        return False
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when ``proof`` shows the tree (``old_size``, ``old_root``) is a prefix of (``new_size``,
    ``new_root``).

    RFC 9162 §2.1.4.2. Equal sizes need equal roots and an empty proof; an old size of 0 needs the empty-tree
    root and an empty proof. Malformed input gives False.
    """
    if not (_is_hash(old_root) and _is_hash(new_root) and all(_is_hash(p) for p in proof)):
        return False
    if not (isinstance(old_size, int) and isinstance(new_size, int)) or not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # exact power of two: the old root is itself a node of the new tree
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
