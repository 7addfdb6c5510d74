"""RFC 6962 Merkle tree: published test vectors, proof round trips and tamper detection."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spintrail.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# Reference vectors of the certificate-transparency / Trillian Merkle implementation, as published in
# transparency-dev/merkle, proof/verify_test.go (commit 02194e9afb6c1d95b5381350007963aa70fff472):
# the eight leaves, the roots of the trees of size 1..8, and known inclusion / consistency proofs.
LEAVES = [
    bytes.fromhex(""),
    bytes.fromhex("00"),
    bytes.fromhex("10"),
    bytes.fromhex("2021"),
    bytes.fromhex("3031"),
    bytes.fromhex("40414243"),
    bytes.fromhex("5051525354555657"),
    bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# (1-based leaf number, tree size, proof)
INCLUSION_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

LEAF_HASHES = [leaf_hash(x) for x in LEAVES]


def _hashes(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --------------------------------------------------------------------------------------------- hashing


def test_leaf_and_node_hashes_use_domain_separation_prefixes() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = leaf_hash(b"l"), leaf_hash(b"r")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert node_hash(left, right) != node_hash(right, left)


def test_empty_tree_root_is_sha256_of_empty_string() -> None:
    assert root_from_leaf_hashes([]) == hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_published_vectors(size: int) -> None:
    assert root_from_leaf_hashes(LEAF_HASHES[:size]) == ROOTS[size - 1]


def test_odd_node_is_promoted_not_duplicated() -> None:
    h = LEAF_HASHES[:3]
    assert root_from_leaf_hashes(h) == node_hash(node_hash(h[0], h[1]), h[2])


def test_root_rejects_values_that_are_not_32_byte_hashes() -> None:
    with pytest.raises(ValueError, match="32-byte hash"):
        root_from_leaf_hashes([b"short"])


# --------------------------------------------------------------------------------------------- vectors


@pytest.mark.parametrize(("leaf_no", "size", "proof_hex"), INCLUSION_VECTORS)
def test_inclusion_proofs_match_published_vectors(leaf_no: int, size: int, proof_hex: list[str]) -> None:
    expected = [bytes.fromhex(p) for p in proof_hex]
    index = leaf_no - 1
    assert inclusion_proof(LEAF_HASHES[:size], index) == expected
    assert verify_inclusion(LEAF_HASHES[index], index, size, expected, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof_hex"), CONSISTENCY_VECTORS)
def test_consistency_proofs_match_published_vectors(old: int, new: int, proof_hex: list[str]) -> None:
    expected = [bytes.fromhex(p) for p in proof_hex]
    assert consistency_proof(LEAF_HASHES[:new], old) == expected
    assert verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], expected)


def test_published_consistency_proof_fails_against_wrong_old_root() -> None:
    proof = [bytes.fromhex(p) for p in CONSISTENCY_VECTORS[2][2]]
    assert verify_consistency(6, 8, ROOTS[5], ROOTS[7], proof)
    assert not verify_consistency(6, 8, ROOTS[4], ROOTS[7], proof)
    assert not verify_consistency(6, 8, ROOTS[7], ROOTS[5], proof)


# ------------------------------------------------------------------------------------------ edge cases


def test_single_leaf_tree_root_is_the_leaf_and_proof_is_empty() -> None:
    h = leaf_hash(b"data")
    assert root_from_leaf_hashes([h]) == h
    assert inclusion_proof([h], 0) == []
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], EMPTY_ROOT)


def test_subtree_root_cannot_pass_for_the_root_of_a_larger_tree() -> None:
    h = _hashes(4)
    subtree_root = node_hash(h[0], h[1])
    assert verify_inclusion(h[0], 0, 2, [h[1]], subtree_root)
    assert not verify_inclusion(h[0], 0, 4, [h[1]], subtree_root)


def test_inclusion_verification_rejects_impossible_positions_and_bad_lengths() -> None:
    some = leaf_hash(b"x")
    for index, size in [(0, 0), (1, 0), (2, 1), (-1, 4)]:
        assert not verify_inclusion(some, index, size, [], some)
    assert not verify_inclusion(b"", 0, 1, [], some)
    assert not verify_inclusion(some, 0, 1, [], b"")
    assert not verify_inclusion(some, 0, 2, [b"\x00" * 31], some)


def test_consistency_verification_trivial_cases() -> None:
    r1, r2 = ROOTS[0], ROOTS[1]
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(1, 1, r1, r1, [])
    assert verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    assert not verify_consistency(1, 1, r1, r2, [])  # same size, different roots: a fork
    assert not verify_consistency(0, 5, r1, ROOTS[4], [])  # empty tree must have the empty root
    assert not verify_consistency(1, 1, r1, r1, [EMPTY_ROOT])  # equal trees need an empty proof
    assert not verify_consistency(2, 1, r2, r1, [])  # time travel
    assert not verify_consistency(1, 2, r1, r2, [])  # missing proof


def test_proof_generation_rejects_out_of_range_arguments() -> None:
    with pytest.raises(ValueError, match="outside a tree of size 3"):
        inclusion_proof(_hashes(3), 3)
    with pytest.raises(ValueError, match="between 0 and the tree size 3"):
        consistency_proof(_hashes(3), 4)
    assert consistency_proof(_hashes(3), 0) == []
    assert consistency_proof(_hashes(3), 3) == []


# --------------------------------------------------------------------------------------- compact range


def test_compact_range_root_matches_full_tree_at_every_size() -> None:
    hashes = _hashes(130)
    cr = CompactRange()
    assert cr.root() == EMPTY_ROOT
    for n, h in enumerate(hashes, start=1):
        cr.append(h)
        assert cr.size == n
        assert len(cr.peaks) == n.bit_count()
        assert cr.root() == root_from_leaf_hashes(hashes[:n])


def test_compact_range_resumes_from_persisted_peaks() -> None:
    hashes = _hashes(45)
    first = CompactRange()
    first.extend(hashes[:29])
    resumed = CompactRange.from_peaks(first.size, first.peaks)
    resumed.extend(hashes[29:])
    assert resumed.root() == root_from_leaf_hashes(hashes)


def test_compact_range_rejects_inconsistent_state_and_bad_leaves() -> None:
    with pytest.raises(ValueError, match="size 5 has 2 peaks, got 1"):
        CompactRange.from_peaks(5, [EMPTY_ROOT])
    with pytest.raises(ValueError, match="non-negative"):
        CompactRange.from_peaks(-1, [])
    with pytest.raises(ValueError, match="leaf hash must be a 32-byte hash, got 3 bytes"):
        CompactRange().append(b"abc")


def test_compact_range_memory_stays_logarithmic() -> None:
    cr = CompactRange()
    h = leaf_hash(b"same")
    for _ in range(5000):
        cr.append(h)
    assert len(cr.peaks) == (5000).bit_count() <= 13


# ------------------------------------------------------------------------------------------ properties


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=1, max_value=300), data=st.data())
def test_every_inclusion_proof_verifies_and_tampering_fails(size: int, data: st.DataObject) -> None:
    hashes = _hashes(size)
    root = root_from_leaf_hashes(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = inclusion_proof(hashes, index)
    assert verify_inclusion(hashes[index], index, size, proof, root)
    assert len(proof) <= size.bit_length()

    other_leaf = leaf_hash(b"not in the log")
    assert not verify_inclusion(other_leaf, index, size, proof, root)
    assert not verify_inclusion(hashes[index], index, size, proof, _flip(root))
    if size > 1:
        other_index = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index))
        assert not verify_inclusion(hashes[index], other_index, size, proof, root)
    for i in range(len(proof)):
        tampered = list(proof)
        tampered[i] = _flip(tampered[i], 3)
        assert not verify_inclusion(hashes[index], index, size, tampered, root)
    assert not verify_inclusion(hashes[index], index, size, [*proof, root], root)
    assert not verify_inclusion(hashes[index], index, size * 2, proof, root)
    if proof:
        assert not verify_inclusion(hashes[index], index, size, proof[:-1], root)


def test_every_leaf_of_small_trees_has_a_verifying_proof() -> None:
    for size in range(1, 34):
        hashes = _hashes(size)
        root = root_from_leaf_hashes(hashes)
        for index in range(size):
            assert verify_inclusion(hashes[index], index, size, inclusion_proof(hashes, index), root)


def test_consistency_proofs_verify_for_all_old_sizes_of_small_trees() -> None:
    for new in range(1, 34):
        hashes = _hashes(new)
        new_root = root_from_leaf_hashes(hashes)
        for old in range(new + 1):
            proof = consistency_proof(hashes, old)
            assert verify_consistency(old, new, root_from_leaf_hashes(hashes[:old]), new_root, proof)


@settings(max_examples=60, deadline=None)
@given(new=st.integers(min_value=2, max_value=300), data=st.data())
def test_consistency_proofs_verify_and_tampering_fails(new: int, data: st.DataObject) -> None:
    hashes = _hashes(new)
    old = data.draw(st.integers(min_value=1, max_value=new - 1))
    old_root, new_root = root_from_leaf_hashes(hashes[:old]), root_from_leaf_hashes(hashes)
    proof = consistency_proof(hashes, old)
    assert verify_consistency(old, new, old_root, new_root, proof)

    assert not verify_consistency(old, new, _flip(old_root), new_root, proof)
    assert not verify_consistency(old, new, old_root, _flip(new_root), proof)
    assert not verify_consistency(old, new, new_root, old_root, proof)
    assert not verify_consistency(old, new, old_root, new_root, [])
    assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
    assert not verify_consistency(old, new, old_root, new_root, [*proof, old_root])
    assert not verify_consistency(old, new, old_root, new_root, [proof[0], *proof])
    for i in range(len(proof)):
        tampered = list(proof)
        tampered[i] = _flip(tampered[i], 4)
        assert not verify_consistency(old, new, old_root, new_root, tampered)


@settings(max_examples=40, deadline=None)
@given(new=st.integers(min_value=2, max_value=200), data=st.data())
def test_rewritten_history_is_not_consistent(new: int, data: st.DataObject) -> None:
    hashes = _hashes(new)
    old = data.draw(st.integers(min_value=1, max_value=new - 1))
    changed = data.draw(st.integers(min_value=0, max_value=old - 1))
    old_root = root_from_leaf_hashes(hashes[:old])
    forged = list(hashes)
    forged[changed] = leaf_hash(b"rewritten")  # an entry the old checkpoint covered was altered
    proof = consistency_proof(forged, old)
    assert not verify_consistency(old, new, old_root, root_from_leaf_hashes(forged), proof)
