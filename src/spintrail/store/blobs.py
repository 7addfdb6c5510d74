"""Raw evidence bytes, compressed: each event alone, as a delta, or as a block of a long-lived zstd stream.

Stage and task events repeat their whole pipeline execution, so consecutive events of one execution share
almost all of their bytes, and the executions of one pipeline look alike. Three codecs are read:

- ``CODEC_PLAIN`` / ``CODEC_ZSTD``: the event alone (tiny events, huge events);
- ``CODEC_ZSTD_DELTA`` (written by earlier versions): zstd with the previous raw event of the same execution
  and class as a raw-content dictionary, a full copy every ``MAX_CHAIN`` events;
- ``CODEC_ZSTD_STREAM`` (written now): the events of one *stream key* (a pipeline and an event class, see
  ``stream_key``) go through one long-lived zstd compressor, and each event is the block flushed after its
  bytes. The compressor keeps its window and match tables between events, so an event costs little more
  than what changed since the similar events before it. Blob *k* of a frame needs blobs *0 .. k-1* of the
  frame to decompress: each names its predecessor in ``base_id`` (``None`` starts a frame). A frame ends
  after ``FRAME_MAX_BYTES`` of raw input or ``FRAME_MAX_EVENTS`` events (so reading one event decompresses
  at most that), at a change of calendar month of event time (so retention, which removes by age, never
  keeps a frame's bytes much longer than its events), and when the writer restarts or a commit rolls back.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import zstandard

CODEC_PLAIN = 0
CODEC_ZSTD = 1
CODEC_ZSTD_DELTA = 2
CODEC_ZSTD_STREAM = 3
CODECS = (CODEC_PLAIN, CODEC_ZSTD, CODEC_ZSTD_DELTA, CODEC_ZSTD_STREAM)
#: Codecs whose ``base_id`` names a blob needed to decompress them.
CHAINED = (CODEC_ZSTD_DELTA, CODEC_ZSTD_STREAM)

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
    if codec == CODEC_ZSTD_STREAM:
        raise ValueError("a stream blob is decompressed with the blobs before it in its frame (BlobReader)")
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

#: zstd level of the streams. On the simulator's realistic mix (16 KB events) level 7 stores about 10% less
#: than level 5 for a little more CPU.
STREAM_LEVEL = 7
#: A frame ends after this many raw bytes or events: the most a read of one event decompresses. Frames start
#: from the dictionary (below), so shorter frames cost little: 2 MB frames store 1% more than 4 MB ones.
FRAME_MAX_BYTES = 2 << 20
FRAME_MAX_EVENTS = 256
#: Larger events are stored alone (plain zstd): they would push everything else out of the window.
STREAM_MAX_EVENT = 512 << 10
#: Window (2^19 = 512 KiB: about 30 similar events back) and small match tables, which compress this data
#: as well as larger ones. About 640 KiB of memory per open stream once its window is full.
_STREAM_PARAMS = {"window_log": 19, "hash_log": 15, "chain_log": 15, "write_dict_id": True}
_STREAM_BYTES = 640 << 10
#: Memory for open streams: about 50 stream keys compress at once; the one least recently used is closed
#: when another opens (its next event starts a new frame, from the dictionary). On the realistic mix, with
#: the dictionary, 25, 50 or 200 open streams store the same within 1%; without it, 100 streams stored 10%
#: more than 200.
STREAM_MEMORY = 32 << 20
#: A frame starts from a zstd dictionary trained on the first events the store keeps (the repeated JSON
#: shape of echo events), so the first event of a frame costs a fraction of a fresh start: 25% less raw
#: storage on the realistic mix. Trained once, in the background, on this many events (at most
#: DICT_SAMPLE_BYTES of them).
DICT_SAMPLES = 1000
DICT_SAMPLE_BYTES = 16 << 20
DICT_SIZE = 112 << 10


def train_dictionary(samples: list[bytes]) -> zstandard.ZstdCompressionDict | None:
    """A dictionary for frame starts trained on ``samples`` (``None`` when they are too few or too alike)."""
    try:
        return zstandard.train_dictionary(DICT_SIZE, samples, level=STREAM_LEVEL)
    except zstandard.ZstdError:
        return None


@dataclass(slots=True)
class StreamBlob:
    """One event's bytes as stored: ``prev`` is the blob before it in its frame (``None`` starts a frame)."""

    codec: int
    data: bytes
    size: int
    sha256: bytes
    prev: int | None


class _Stream:
    __slots__ = ("events", "last_id", "period", "raw_bytes", "writer")

    def __init__(
        self,
        params: zstandard.ZstdCompressionParameters,
        period: int,
        dictionary: zstandard.ZstdCompressionDict | None,
    ) -> None:
        compressor = (
            zstandard.ZstdCompressor(compression_params=params, dict_data=dictionary)
            if dictionary is not None
            else zstandard.ZstdCompressor(compression_params=params)
        )
        self.writer = compressor.compressobj()
        self.last_id: int | None = None
        self.period = period
        self.raw_bytes = 0
        self.events = 0


class Streams:
    """The open zstd streams of one writer, one per stream key, least recently used closed first.

    ``compress`` returns the blob for an event and must be followed by ``stored`` with the id the blob
    was stored under (the next blob of the stream names it as ``prev``). ``exists`` tells whether a blob id
    is still stored (retention may have removed the tail of an idle frame): if not, a new frame starts.
    After a failed commit call ``discard`` with the keys used in it: their streams hold bytes never stored.
    """

    def __init__(self, *, level: int = STREAM_LEVEL, max_bytes: int = STREAM_MEMORY) -> None:
        self.params = zstandard.ZstdCompressionParameters.from_level(level, **_STREAM_PARAMS)
        self.max_open = max(1, max_bytes // _STREAM_BYTES)
        self._open: OrderedDict[str, _Stream] = OrderedDict()
        self._plain = zstandard.ZstdCompressor(level=level)
        self.dictionary: zstandard.ZstdCompressionDict | None = None
        self.samples: list[bytes] | None = []  # raw events kept to train a dictionary on; None: done
        self._sample_bytes = 0

    def use_dictionary(self, data: bytes) -> None:
        """Start new frames from this dictionary (stored where readers find it by its id)."""
        self.dictionary = zstandard.ZstdCompressionDict(data)
        self.dictionary.precompute_compress(compression_params=self.params)
        self.samples = None

    def sample(self, raw: bytes) -> bool:
        """Keep ``raw`` to train a dictionary on; ``True`` once there are enough samples."""
        if self.samples is None or self.dictionary is not None:
            return False
        if len(raw) <= STREAM_MAX_EVENT and self._sample_bytes + len(raw) <= DICT_SAMPLE_BYTES:
            self.samples.append(raw)
            self._sample_bytes += len(raw)
        return len(self.samples) >= DICT_SAMPLES or self._sample_bytes + STREAM_MAX_EVENT > DICT_SAMPLE_BYTES

    def take_samples(self) -> list[bytes]:
        """The samples, once (no more are kept)."""
        out, self.samples = self.samples or [], None
        return out

    def compress(
        self,
        key: str | None,
        raw: bytes,
        time_ms: int,
        exists: Callable[[int], bool] | None = None,
        cut: bytes | None = None,
    ) -> StreamBlob:
        """The blob of ``raw``; ``cut`` (the event id) is left out of a stream block and put back on read."""
        digest = hashlib.sha256(raw).digest()
        if len(raw) < _SMALL:
            return StreamBlob(CODEC_PLAIN, raw, len(raw), digest, None)
        if key is None or len(raw) > STREAM_MAX_EVENT:
            return StreamBlob(CODEC_ZSTD, self._plain.compress(raw), len(raw), digest, None)
        period = month_of(time_ms)
        stream = self._open.get(key)
        if (
            stream is None
            or stream.period != period
            or stream.raw_bytes + len(raw) > FRAME_MAX_BYTES
            or stream.events >= FRAME_MAX_EVENTS
            or (stream.last_id is not None and exists is not None and not exists(stream.last_id))
        ):
            if stream is not None:
                del self._open[key]
            stream = _Stream(self.params, period, self.dictionary)
            self._open[key] = stream
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(key)
        at = raw.find(cut) if cut is not None and len(cut) >= CUT_MIN else -1
        body = raw[:at] + raw[at + len(cut) :] if at >= 0 and cut is not None else raw
        data = _varint(at + 1) + stream.writer.compress(body)
        data += stream.writer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        stream.raw_bytes += len(body)
        stream.events += 1
        return StreamBlob(CODEC_ZSTD_STREAM, data, len(raw), digest, stream.last_id)

    def stored(self, key: str | None, blob: StreamBlob, blob_id: int) -> None:
        """Record where the blob ``compress`` just returned for ``key`` was stored."""
        if blob.codec == CODEC_ZSTD_STREAM and key is not None:
            stream = self._open.get(key)
            if stream is not None:
                stream.last_id = blob_id

    def discard(self, keys: set[str]) -> None:
        """Close the streams of ``keys`` (their next events start new frames)."""
        for key in keys:
            self._open.pop(key, None)

    def clear(self) -> None:
        self._open.clear()

    def __len__(self) -> int:
        return len(self._open)


#: A stream block leaves out the event's id (random, so it costs its full length in every block) when it
#: is at least this long; the block starts with a varint: 0, or 1 + the offset the id was cut at.
CUT_MIN = 16


class NeedsEventId(LookupError):
    """A stream blob left its event id out, and the id was not given to put it back."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _split(data: bytes) -> tuple[int, bytes]:
    """(offset the event id was cut at or -1, the zstd block) of a stream blob."""
    n = shift = i = 0
    while True:
        if i >= len(data) or shift > 35:
            raise ValueError("a stream blob without its header")
        byte = data[i]
        n |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return n - 1, bytes(data[i:])
        shift += 7


def stream_key(
    pipeline_config_id: str | None,
    application: str | None,
    execution_id: str | None,
    source: str | None,
    event_type: str | None,
) -> str:
    """The stream an event is stored in: its pipeline (every execution of it) and event class, its
    application's orchestrations, or its kind (source and type) for events outside executions.

    The class (pipeline, stage, task) is part of the key because retention keeps each class for its own
    age: a frame holds events that expire together."""
    parts = (event_type or "").split(":")
    cls = parts[1] if len(parts) > 1 else parts[0]
    if pipeline_config_id:
        return f"p\x00{pipeline_config_id}\x00{cls}"
    if execution_id:
        return f"x\x00{application or ''}\x00{cls}"
    return f"s\x00{source or ''}\x00{event_type or ''}"


def month_of(time_ms: int) -> int:
    """The UTC calendar month of an epoch-ms time, as year * 12 + month index."""
    try:
        dt = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return 0
    return dt.year * 12 + dt.month - 1


# -- reading ---------------------------------------------------------------------------------------------

#: A stored blob as read: (codec, data, size, base_id).
Row = tuple[int, bytes, int, "int | None"]


class BlobReader:
    """Reads raw blobs of any codec through ``fetch(id) -> (codec, data, size, base_id) | None``.

    Keeps recently decoded blobs (delta bases) and the decompressor positioned after recently read stream
    blobs, so reading the blobs of a frame in order (a check, a copy, retention) decompresses each frame
    once. ``LookupError``: a blob or a base is missing; ``ValueError``: bytes that do not decompress.
    """

    def __init__(
        self,
        fetch: Callable[[int], Row | None],
        *,
        dictionary: Callable[[int], bytes | None] | None = None,
        max_bytes: int = 64 << 20,
        max_positions: int = 16,
    ) -> None:
        self.fetch = fetch
        self.dictionary = dictionary
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}
        self._decoded: OrderedDict[int, bytes] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self._positions: OrderedDict[int, zstandard.ZstdDecompressionObj] = OrderedDict()
        self.max_positions = max_positions

    def read(self, blob_id: int, event_id: str | None = None) -> bytes:
        """The bytes of a blob; ``event_id`` (of the blob's event) puts back an id a stream block left out."""
        data = self._decoded.get(blob_id)
        if data is not None:
            self._decoded.move_to_end(blob_id)
            return data
        row = self._row(blob_id)
        if row[0] == CODEC_ZSTD_STREAM:
            at, out = self._stream(blob_id, row)
            if at >= 0:
                if event_id is None:
                    raise NeedsEventId(f"raw blob {blob_id} needs its event id to be read")
                out = out[:at] + event_id.encode("utf-8", "surrogatepass") + out[at:]
        else:
            out = self._delta(blob_id, row)
        if len(out) != row[2]:
            raise ValueError(f"raw blob {blob_id} decompresses to {len(out)} bytes, {row[2]} recorded")
        self._remember(blob_id, out)
        return out

    def _row(self, blob_id: int) -> Row:
        row = self.fetch(blob_id)
        if row is None:
            raise LookupError(f"raw blob {blob_id} is missing")
        return row

    def _delta(self, blob_id: int, row: Row) -> bytes:
        chain: list[tuple[int, Row]] = [(blob_id, row)]
        base: bytes | None = None
        while chain[-1][1][0] == CODEC_ZSTD_DELTA:
            base_id = chain[-1][1][3]
            if base_id is None:
                raise ValueError(f"delta blob {chain[-1][0]} names no base")
            if len(chain) > 2 * MAX_CHAIN + 2 or base_id >= chain[-1][0]:
                raise ValueError(f"raw blob {blob_id} has a broken delta chain")
            cached = self._decoded.get(base_id)
            if cached is not None:
                base = cached
                break
            chain.append((base_id, self._row(base_id)))
        out = base
        for bid, (codec, data, size, _) in reversed(chain):
            out = decompress(codec, data, size, out)
            if bid != blob_id:
                self._remember(bid, out)
        assert out is not None
        return out

    def _stream(self, blob_id: int, row: Row) -> tuple[int, bytes]:
        parts: list[Row] = [row]
        reader: zstandard.ZstdDecompressionObj | None = None
        prev = row[3]
        last = blob_id
        while prev is not None:
            reader = self._positions.pop(prev, None)
            if reader is not None:
                break
            if prev >= last or len(parts) > FRAME_MAX_EVENTS * 4:
                raise ValueError(f"raw blob {blob_id} has a broken stream frame")
            prev_row = self._row(prev)
            if prev_row[0] != CODEC_ZSTD_STREAM:
                raise ValueError(f"raw blob {prev} of codec {prev_row[0]} inside a stream frame")
            parts.append(prev_row)
            last, prev = prev, prev_row[3]
        blocks = [_split(data) for _, data, _, _ in reversed(parts)]
        if reader is None:
            # A decompressor of its own: objects of one ZstdDecompressor share its context.
            reader = self._decompressor(blocks[0][1]).decompressobj()
        out = b""
        try:
            for _, block in blocks:
                out = reader.decompress(block)
        except zstandard.ZstdError as exc:
            raise ValueError(f"raw blob {blob_id} does not decompress: {exc}") from exc
        self._positions[blob_id] = reader
        while len(self._positions) > self.max_positions:
            self._positions.popitem(last=False)
        return blocks[-1][0], out

    def _decompressor(self, first: bytes) -> zstandard.ZstdDecompressor:
        """A decompressor for the frame that starts with ``first`` (with the dictionary it names)."""
        try:
            dict_id = zstandard.get_frame_parameters(first).dict_id
        except zstandard.ZstdError as exc:
            raise ValueError(f"not the start of a zstd frame: {exc}") from exc
        if not dict_id:
            return zstandard.ZstdDecompressor()
        d = self._dicts.get(dict_id)
        if d is None:
            data = self.dictionary(dict_id) if self.dictionary is not None else None
            if data is None:
                raise LookupError(f"zstd dictionary {dict_id} is missing")
            d = self._dicts[dict_id] = zstandard.ZstdCompressionDict(data)
        return zstandard.ZstdDecompressor(dict_data=d)

    def _remember(self, blob_id: int, data: bytes) -> None:
        if blob_id in self._decoded:
            return
        self._decoded[blob_id] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._decoded) > 1:
            _, old = self._decoded.popitem(last=False)
            self._bytes -= len(old)
