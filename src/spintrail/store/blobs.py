"""Raw evidence bytes, compressed: each event alone with zstd, as a delta, or as a block of a zstd stream.

Stage and task events repeat their whole pipeline execution, so consecutive events of one execution share
almost all of their bytes, and executions of one pipeline look alike. Two schemes exploit that:

- delta (``CODEC_ZSTD_DELTA``): an event compressed with zstd using the previous raw event of the same
  execution as a raw-content dictionary; every ``MAX_CHAIN`` events a full copy starts a new chain.
- stream (``CODEC_ZSTD_STREAM``, what the SQLite store writes): the events of one *stream key* (one
  pipeline, see ``stream_key``) go through one long-lived zstd compressor, and each event is the block
  flushed after its bytes. The compressor keeps its window and match tables between events, so an event
  costs little more than what changed since the events before it, and compressing it costs no dictionary
  set-up. Blob ``k`` of a frame needs blobs ``0 .. k-1`` of the frame to decompress: each blob names its
  predecessor (``prev``), and a frame ends after ``FRAME_MAX_BYTES`` of raw input, at a month boundary of
  event time (so retention by month never cuts a frame), and when the process restarts or a commit rolls
  back. Reading any event therefore decompresses at most ``FRAME_MAX_BYTES``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import zstandard

CODEC_PLAIN = 0
CODEC_ZSTD = 1
CODEC_ZSTD_DELTA = 2
CODEC_ZSTD_STREAM = 3

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


# -- streams ---------------------------------------------------------------------------------------------

#: zstd level of the streams. Compressed bytes per event of the simulator's realistic mix (50,000 events,
#: 16 KB each, event ids cut out) and compression CPU per event: level 3 148 B (16 us), level 5 117 B
#: (19 us), level 6 105 B (23 us), level 7 102 B (23 us), level 9 100 B (27 us).
STREAM_LEVEL = 7
#: A frame ends after this many raw bytes: the most a read of one event decompresses (about 20 ms).
#: Each frame starts without history (about 2 KB for a stage event): 4 MB frames store 7% more.
FRAME_MAX_BYTES = 16 << 20
#: Larger events are stored alone (plain zstd): they would push everything else out of the window.
STREAM_MAX_EVENT = 512 << 10
#: Window and match tables of one stream (2^20 = 1 MiB window): about 1.25 MiB of memory per open stream.
#: Smaller match tables (2^15) compress this data as well as larger ones.
_STREAM_PARAMS = {"window_log": 20, "hash_log": 15, "chain_log": 15}
_STREAM_BYTES = (1 << 20) + (4 << 15) + (4 << 15)
#: Memory for open streams, by default: about 100 pipelines compress at once; the stream least recently
#: used is closed when another opens (its next event starts a new frame). Half of it stores 8% more.
STREAM_MEMORY = 128 << 20


@dataclass(slots=True)
class StreamBlob:
    """One event's bytes as stored: ``prev`` is the blob before it in its frame (``None`` starts a frame)."""

    codec: int
    data: bytes
    size: int
    prev: int | None


class _Stream:
    __slots__ = ("compressor", "last_id", "period", "raw_bytes", "writer")

    def __init__(self, level: int, period: int) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(level, **_STREAM_PARAMS)
        self.compressor = zstandard.ZstdCompressor(compression_params=params)
        self.writer = self.compressor.compressobj()
        self.last_id: int | None = None
        self.period = period
        self.raw_bytes = 0


class Streams:
    """The open zstd streams of one writer, one per stream key, least recently used closed first.

    ``compress`` returns the blob for an event and must be followed by ``stored`` with the id the blob
    was stored under (the next blob of the stream names it as ``prev``). After a failed commit call
    ``discard`` with the keys used in it: their streams hold bytes that were never stored.
    """

    def __init__(self, *, level: int = STREAM_LEVEL, max_bytes: int = STREAM_MEMORY) -> None:
        self.level = level
        self.max_open = max(1, max_bytes // _STREAM_BYTES)
        self._open: OrderedDict[str, _Stream] = OrderedDict()
        self._plain = zstandard.ZstdCompressor(level=level)

    def compress(self, key: str | None, raw: bytes, time_ms: int) -> StreamBlob:
        if len(raw) < _SMALL:
            return StreamBlob(CODEC_PLAIN, raw, len(raw), None)
        if key is None or len(raw) > STREAM_MAX_EVENT:
            return StreamBlob(CODEC_ZSTD, self._plain.compress(raw), len(raw), None)
        period = month_of(time_ms)
        stream = self._open.get(key)
        if stream is None or stream.period != period or stream.raw_bytes + len(raw) > FRAME_MAX_BYTES:
            if stream is not None:
                del self._open[key]
            stream = _Stream(self.level, period)
            self._open[key] = stream
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(key)
        data = stream.writer.compress(raw) + stream.writer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        stream.raw_bytes += len(raw)
        return StreamBlob(CODEC_ZSTD_STREAM, data, len(raw), stream.last_id)

    def stored(self, key: str | None, blob: StreamBlob, blob_id: int) -> None:
        """Record where the blob ``compress`` just returned for ``key`` was stored."""
        if blob.codec == CODEC_ZSTD_STREAM and key is not None:
            stream = self._open.get(key)
            if stream is not None:
                stream.last_id = blob_id

    def discard(self, keys: set[str | None]) -> None:
        """Close the streams of ``keys`` (their next events start new frames)."""
        for key in keys:
            if key is not None:
                self._open.pop(key, None)

    def clear(self) -> None:
        self._open.clear()

    def __len__(self) -> int:
        return len(self._open)


def decompress_frame(parts: Sequence[tuple[int, bytes, int]]) -> bytes:
    """The bytes of the last of ``parts``: (codec, data, size) of a frame's blobs from its first on."""
    if len(parts) == 1 and parts[0][0] != CODEC_ZSTD_STREAM:
        codec, data, size = parts[0]
        return decompress(codec, data, size)
    reader = _decompressor.decompressobj()
    out = b""
    for codec, data, size in parts:
        if codec != CODEC_ZSTD_STREAM:
            raise ValueError(f"blob of codec {codec} inside a zstd stream frame")
        out = reader.decompress(data)
        if len(out) != size:
            raise ValueError(f"stream blob decompressed to {len(out)} bytes, expected {size}")
    return out


def stream_key(
    pipeline_config_id: str | None,
    application: str | None,
    execution_type: str | None,
    execution_id: str | None,
    source: str | None,
    event_type: str | None,
) -> str:
    """The stream an event is stored in: its pipeline (every execution of it), its application's
    orchestrations, or its kind (source and type) for events outside executions."""
    if pipeline_config_id:
        return "p\x00" + pipeline_config_id
    if execution_id:
        return f"x\x00{application or ''}\x00{execution_type or ''}"
    return f"s\x00{source or ''}\x00{event_type or ''}"


def month_of(time_ms: int) -> int:
    """The UTC calendar month of an epoch-ms time, as year * 12 + month index."""
    try:
        dt = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return 0
    return dt.year * 12 + dt.month - 1
