"""Exports: exactly the filtered rows, the record's field names as columns, streamed with bounded memory."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, SimulatedData
from spintrail import export
from spintrail.query import Filters
from spintrail.record import API_FIELDS, LIST_FIELDS, AuditRecord
from spintrail.store import PreparedEvent
from spintrail.store.base import Page
from spintrail.store.sqlite import SqliteStore


@pytest.fixture(scope="module")
def store(simulated: SimulatedData) -> Iterator[SqliteStore]:
    s = SqliteStore(simulated.path)
    yield s
    s.close()


def _all_ids(store: SqliteStore, filters: Filters) -> list[int]:
    return [r.id for r in store.iter_search(filters, page_size=333) if r.id is not None]


def _parse_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


def test_csv_has_the_record_fields_and_exactly_the_filtered_rows(store: SqliteStore) -> None:
    filters = Filters(type=("orca:stage:*",), account=("aws-prod", "gce-prod"))
    text = b"".join(export.iter_export(store, filters, "csv", page_size=50)).decode()
    header, rows = _parse_csv(text)
    assert tuple(header) == API_FIELDS
    ids = _all_ids(store, filters)
    assert len(ids) > 150, "spans several pages"
    assert [int(r["id"]) for r in rows] == ids
    first = store.get(ids[0])
    assert first is not None
    api = first.to_api()
    for name in API_FIELDS:
        want = api[name]
        if name in LIST_FIELDS:
            assert rows[0][name] == ";".join(want)
        else:
            assert rows[0][name] == ("" if want is None else str(want))
    assert all(r["type"].startswith("orca:stage:") for r in rows)
    assert all({"aws-prod", "gce-prod"} & set(r["accounts"].split(";")) for r in rows)


def test_ndjson_lines_are_records_in_field_order(store: SqliteStore) -> None:
    filters = Filters(stage_type=("manualJudgment",))
    lines = b"".join(export.iter_export(store, filters, "ndjson", page_size=40)).decode().splitlines()
    ids = _all_ids(store, filters)
    assert len(lines) == len(ids) > 40
    objects = [json.loads(line) for line in lines]
    assert [o["id"] for o in objects] == ids
    assert all(tuple(o) == API_FIELDS for o in objects)
    record = store.get(ids[-1])
    assert record is not None and objects[-1] == record.to_api()


def test_empty_export_is_a_header_only(store: SqliteStore) -> None:
    text = b"".join(export.iter_export(store, Filters(application=("no-such-app",)), "csv")).decode()
    assert text == ",".join(API_FIELDS) + "\r\n"
    assert b"".join(export.iter_export(store, Filters(application=("no-such-app",)), "ndjson")) == b""
    with pytest.raises(export.ExportError, match="csv or ndjson"):
        export.check_format("xlsx")


class CountingStore(SqliteStore):
    """A real SQLite store that counts the pages read (to see that an export reads as it writes)."""

    pages = 0

    def search(self, filters: Filters, *, limit: int = 100, cursor: str | None = None) -> Page:
        self.pages += 1
        return super().search(filters, limit=limit, cursor=cursor)


def test_export_reads_one_page_per_chunk(simulated: SimulatedData) -> None:
    store = CountingStore(simulated.path)
    try:
        chunks = export.iter_export(store, Filters(), "csv", page_size=100)
        next(chunks)  # header and first page of rows
        assert store.pages == 1
        next(chunks)
        assert store.pages == 2, "nothing is read ahead"
        total = store.stats().events
        rest = sum(1 for _ in chunks)
        assert store.pages == total // 100 + 1
        assert rest >= total // 100 - 2
    finally:
        store.close()


def test_file_name_says_what_is_inside() -> None:
    f = Filters.from_params(
        {"application": ["checkout"], "account": ["aws prod/1"], "since": ["2024-06-01T00:00:00Z"]}
    )
    name = export.filename(f, "csv", now_ms=1718370095000)
    assert name == (
        "spintrail-events_application-checkout_account-aws-prod-1_since-20240601T000000Z_20240614T130135Z.csv"
    )
    assert export.filename(Filters(), "ndjson", now_ms=0) == "spintrail-events_19700101T000000Z.ndjson"
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", export.filename(Filters(q='a "b" c'), "csv"))


# -- over HTTP and from the command line -------------------------------------------------------------


def _api_ids(server: Server, params: list[tuple[str, str]]) -> list[int]:
    ids: list[int] = []
    cursor = None
    while True:
        page = server.get(
            "/api/v1/events", params=[*params, ("limit", "1000")] + ([("cursor", cursor)] if cursor else [])
        )
        assert page.status_code == 200
        body = page.json()
        ids += [e["id"] for e in body["events"]]
        cursor = body["next_cursor"]
        if not cursor:
            return ids


def test_http_export_is_exactly_the_search_with_the_same_filters(
    simulated_server: Server, simulated: SimulatedData
) -> None:
    top = Counter(e["application"] for e in simulated.facts.executions.values()).most_common(2)
    (a, _), (b, _) = top
    params = [("application", a), ("application", b), ("type", "orca:*"), ("since", "14d")]
    expected = _api_ids(simulated_server, params)
    assert expected
    resp = simulated_server.get("/api/v1/export", params=[*params, ("format", "csv")])
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    disposition = resp.headers["content-disposition"]
    pattern = (
        rf'attachment; filename="spintrail-events_application-{re.escape(a)}\+{re.escape(b)}_type-orca_'
        r'since-\d{8}T\d{6}Z_\d{8}T\d{6}Z\.csv"'
    )
    assert re.fullmatch(pattern, disposition), disposition
    header, rows = _parse_csv(resp.text)
    assert tuple(header) == API_FIELDS
    assert [int(r["id"]) for r in rows] == expected
    nd = simulated_server.get("/api/v1/export", params=[*params, ("format", "ndjson")])
    assert nd.headers["content-type"].startswith("application/x-ndjson")
    assert nd.headers["content-disposition"].endswith('.ndjson"')
    assert [json.loads(line)["id"] for line in nd.text.splitlines()] == expected


def test_http_export_refuses_bad_parameters(simulated_server: Server) -> None:
    bad = simulated_server.get("/api/v1/export", params={"format": "xml"})
    assert (
        bad.status_code == 400
        and bad.json()["error"] == "bad_format"
        and "csv or ndjson" in bad.json()["message"]
    )
    bad = simulated_server.get("/api/v1/export", params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"] == "bad_filter" and "since" in bad.json()["message"]


def test_cli_export_matches_the_api(
    simulated_server: Server, simulated: SimulatedData, tmp_path: Path
) -> None:
    out = tmp_path / "export.csv"
    args = ["--database", simulated.database, "--account", "aws-prod", "--stage-type", "resizeServerGroup"]
    run = subprocess.run(
        [sys.executable, "-m", "spintrail", "export", *args, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    api = simulated_server.get(
        "/api/v1/export", params={"account": "aws-prod", "stage_type": "resizeServerGroup", "format": "csv"}
    )
    assert out.read_bytes() == api.content and api.text.count("\n") > 2
    to_stdout = subprocess.run(
        [sys.executable, "-m", "spintrail", "export", *args, "--format", "ndjson"],
        capture_output=True,
        timeout=60,
    )
    assert to_stdout.returncode == 0
    assert len(to_stdout.stdout.splitlines()) == api.text.count("\n") - 1
    bad = subprocess.run(
        [sys.executable, "-m", "spintrail", "export", *args, "--until", "soon"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "until must be" in bad.stderr


# -- bounded memory ------------------------------------------------------------------------------------


def _fill(path: Path, n: int) -> None:
    from spintrail.settings import Settings
    from spintrail.trust import install

    store = SqliteStore(path)
    install(store, Settings(database=str(path)))  # events get leaves as they are written: serve requires it
    try:
        base = 1_700_000_000_000
        batch: list[PreparedEvent] = []
        for i in range(n):
            record = AuditRecord(
                event_id=f"bulk-{i:07d}",
                received_at=base + i,
                time=base + i * 10,
                source="orca",
                type="orca:task:complete",
                application=f"app{i % 7}",
                user=f"user{i % 13}@example.com",
                accounts=["aws-prod"],
                server_groups=[f"app{i % 7}-prod-v{i % 900:03d}"],
                description="Deploy to Prod / Deploy in us-east-1 (createServerGroup) / monitorDeploy "
                + "x" * 200,
                status="SUCCEEDED",
            )
            batch.append(PreparedEvent(record=record, raw=b'{"details":{"type":"orca:task:complete"}}'))
            if len(batch) == 5000:
                store.append(batch)
                batch = []
        store.append(batch)
    finally:
        store.close()


def _rss_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's memory")
def test_a_large_export_streams_with_bounded_memory(server_factory: Any, tmp_path: Path) -> None:
    n = 25_000
    path = tmp_path / "bulk.db"
    _fill(path, n)
    server = server_factory(str(path))
    assert server.proc is not None
    pid = server.proc.pid
    warm = server.get("/api/v1/export", params={"format": "csv", "application": "app1", "limit": "1"})
    assert warm.status_code == 200
    before = _rss_kb(pid, "VmRSS")
    rows = 0
    size = 0
    started = time.monotonic()
    with httpx.stream("GET", server.url + "/api/v1/export?format=ndjson", timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                rows += 1
                size += len(line)
    elapsed = time.monotonic() - started
    peak = _rss_kb(pid, "VmHWM")
    assert rows == n
    # The whole export is ~22 MB of JSON (and several times that as Python objects); the server's peak
    # memory must stay within a few pages of it.
    assert size > 20_000_000
    print(f"export of {rows} rows, {size} bytes: server peak memory +{(peak - before) // 1024} MB")
    assert peak - before < 40_000, f"server memory grew by {(peak - before) // 1024} MB during the export"
    assert elapsed < 60
