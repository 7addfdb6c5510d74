"""Raw evidence bytes, compressed: each event alone with zstd, or as a delta against an earlier event.

Stage and task events repeat their whole pipeline execution, so consecutive events of one execution share
almost all of their bytes. An event is compressed with zstd using the previous raw event of the same
execution (and the same event class) as a raw-content dictionary; every ``MAX_CHAIN`` events a full copy
starts a new chain, so reading any event decompresses at most ``MAX_CHAIN`` blobs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import zstandard

CODEC_PLAIN = 0
CODEC_ZSTD = 1
CODEC_ZSTD_DELTA = 2

MAX_CHAIN = 24
LEVEL = 3
_SMALL = 64  # below this many bytes compression does not pay


@dataclass(slots=True)
class Blob:
    """A compressed raw event ready to store."""

    codec: int
    data: bytes
    size: int
    sha256: bytes
    base_id: int | None = None


_plain_compressor = zstandard.ZstdCompressor(level=LEVEL)
_decompressor = zstandard.ZstdDecompressor()


def compress(raw: bytes, base: bytes | None = None, base_id: int | None = None) -> Blob:
    """Compress ``raw``, as a delta against ``base`` when given."""
    digest = hashlib.sha256(raw).digest()
    if len(raw) < _SMALL:
        return Blob(CODEC_PLAIN, raw, len(raw), digest)
    if base is not None and base_id is not None:
        d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        data = zstandard.ZstdCompressor(level=LEVEL, dict_data=d).compress(raw)
        return Blob(CODEC_ZSTD_DELTA, data, len(raw), digest, base_id)
    return Blob(CODEC_ZSTD, _plain_compressor.compress(raw), len(raw), digest)


def decompress(codec: int, data: bytes, size: int, base: bytes | None = None) -> bytes:
    """The original bytes of one blob (``base`` is the decompressed base for deltas)."""
    if codec == CODEC_PLAIN:
        return bytes(data)
    if codec == CODEC_ZSTD:
        return _decompressor.decompress(data, max_output_size=size)
    if codec == CODEC_ZSTD_DELTA:
        if base is None:
            raise ValueError("delta blob needs its base")
        d = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdDecompressor(dict_data=d).decompress(data, max_output_size=size)
    raise ValueError(f"unknown raw codec {codec}")


class DeltaCache:
    """The latest raw event of recent executions, so the next event of each can be stored as a delta."""

    def __init__(self, max_bytes: int = 64 << 20, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[str, tuple[int, bytes, int]] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.max_entries = max_entries

    def base_for(self, key: str | None) -> tuple[int, bytes, int] | None:
        """(blob id, bytes, chain depth) of the base to use for ``key``, or ``None`` for a full copy."""
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[2] >= MAX_CHAIN:
            return None
        self._entries.move_to_end(key)
        return entry

    def remember(self, key: str | None, blob_id: int, raw: bytes, depth: int) -> None:
        if key is None or len(raw) > self.max_bytes // 4:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._entries[key] = (blob_id, raw, depth)
        self._bytes += len(raw)
        while self._entries and (self._bytes > self.max_bytes or len(self._entries) > self.max_entries):
            _, (_, evicted, _) = self._entries.popitem(last=False)
            self._bytes -= len(evicted)

    def forget(self, blob_ids: set[int]) -> None:
        """Drop entries whose blob was not committed (a rolled-back batch)."""
        for key in [k for k, v in self._entries.items() if v[0] in blob_ids]:
            _, raw, _ = self._entries.pop(key)
            self._bytes -= len(raw)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


def delta_key(execution_id: str | None, event_type: str | None) -> str | None:
    """Events that may be deltas of each other: one execution, one event class (pipeline, stage, task)."""
    if not execution_id:
        return None
    parts = (event_type or "").split(":")
    cls = parts[1] if len(parts) > 1 else parts[0]
    return f"{execution_id}\x00{cls}"
