"""Exports: every audit record matching a set of filters as CSV or NDJSON, streamed page by page.

The records are read one keyset page at a time (``Store.iter_search``) and written out as they come, so an
export of a million rows never holds more than a page in memory. Columns (CSV) and keys (NDJSON) are the
audit record's field names, ``record.API_FIELDS``, in that order; in CSV, list fields are joined with ``;``.
See ``docs/exports.md``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from spintrail.output import cell
from spintrail.query import Filters
from spintrail.record import API_FIELDS, AuditRecord, format_time
from spintrail.store.base import Store

#: Export formats and their media types.
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}

#: Records read from the store per page.
PAGE_SIZE = 1000


class ExportError(ValueError):
    """An export asked in a way that cannot be served; the message says what to pass."""


def check_format(fmt: str | None) -> str:
    """The export format, ``csv`` (default) or ``ndjson``."""
    value = (fmt or "csv").strip().lower()
    if value not in MEDIA_TYPES:
        raise ExportError(f"format must be csv or ndjson, not {fmt!r}")
    return value


_TIMES = frozenset({"time", "received_at"})


def _values(record: AuditRecord) -> list[object]:
    """The record's values in ``API_FIELDS`` order, as ``AuditRecord.to_api`` gives them (faster)."""
    return [format_time(getattr(record, f)) if f in _TIMES else getattr(record, f) for f in API_FIELDS]


def iter_csv(store: Store, filters: Filters, *, page_size: int = PAGE_SIZE) -> Iterator[str]:
    """CSV text in chunks: the header row, then one chunk per store page (newest first)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(API_FIELDS)
    for n, record in enumerate(store.iter_search(filters, page_size=page_size), start=1):
        writer.writerow([cell(v) for v in _values(record)])
        if n % page_size == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def iter_ndjson(store: Store, filters: Filters, *, page_size: int = PAGE_SIZE) -> Iterator[str]:
    """One JSON object per line (keys in ``API_FIELDS`` order), in chunks of a store page."""
    lines: list[str] = []
    for record in store.iter_search(filters, page_size=page_size):
        row = dict(zip(API_FIELDS, _values(record), strict=True))
        lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        if len(lines) >= page_size:
            yield "\n".join(lines) + "\n"
            lines.clear()
    if lines:
        yield "\n".join(lines) + "\n"


def iter_export(store: Store, filters: Filters, fmt: str, *, page_size: int = PAGE_SIZE) -> Iterator[bytes]:
    """The export as UTF-8 byte chunks."""
    chunks = iter_csv if check_format(fmt) == "csv" else iter_ndjson
    for chunk in chunks(store, filters, page_size=page_size):
        if chunk:
            yield chunk.encode("utf-8")


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def filename(filters: Filters, fmt: str, *, now_ms: int | None = None) -> str:
    """A file name saying what is in the export, e.g.
    ``spintrail-events_application-checkout_since-20240601T000000Z_20240614T130135Z.csv``."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    parts = ["spintrail-events"]
    for name, values in filters.as_params().items():
        if name in ("since", "until"):
            stamp = datetime.fromtimestamp(getattr(filters, name) / 1000, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
            parts.append(f"{name}-{stamp}")
        else:
            text = "+".join(values)
            parts.append(f"{name}-{_UNSAFE.sub('-', text).strip('-')[:40]}")
    parts.append(datetime.fromtimestamp(now / 1000, tz=UTC).strftime("%Y%m%dT%H%M%SZ"))
    name = "_".join(parts)
    if len(name) > 180:
        name = name[:180].rstrip("_-")
    return f"{name}.{check_format(fmt)}"
