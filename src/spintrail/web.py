"""The web app: server-rendered pages for people, and the API behind reports, the dashboard and exports.

Pages (Jinja2 templates in ``templates/``, hand-written CSS and JavaScript in ``static/``) work without
JavaScript; the live view uses a few lines of its own script for server-sent events. Every page's state is
in its URL, with the same parameter names as ``GET /api/v1/events``, so any view can be shared as a link.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from spintrail import auth, charts, export, report
from spintrail.output import cell
from spintrail.query import FILTER_HELP, FilterError, Filters, parse_limit, parse_time, row_id
from spintrail.record import API_FIELDS, AuditRecord, format_time
from spintrail.store import Store, StoreUnavailable
from spintrail.timeline import build_timeline, stage_spans

pages = APIRouter(include_in_schema=False)
api = APIRouter()

#: Time-range presets offered on the pages (value of ``since``; "" is all time).
PRESETS: tuple[tuple[str, str], ...] = (
    ("1h", "Last hour"),
    ("24h", "24 h"),
    ("7d", "7 days"),
    ("30d", "30 days"),
    ("", "All time"),
)
#: Facets on the search page: filter name -> record field.
FACETS: dict[str, str] = {"application": "application", "account": "accounts", "user": "user", "type": "type"}
#: Filters shown as inputs on the search form, in order.
FORM_FILTERS: tuple[str, ...] = (
    "application",
    "account",
    "region",
    "user",
    "type",
    "status",
    "ticket",
    "instance",
)
LIVE_STREAM_SECONDS = 15.0
LIVE_POLL_SECONDS = 1.0
RAW_DISPLAY_MAX = 2_000_000


# --------------------------------------------------------------------------------------------------
# templates and small helpers
# --------------------------------------------------------------------------------------------------


def _fmt_time(value: Any, seconds: bool = True) -> str:
    """Epoch ms or an RFC 3339 string as ``2024-06-14 13:01:35`` (UTC)."""
    if value is None or value == "":
        return ""
    if isinstance(value, int):
        dt = datetime.fromtimestamp(value / 1000, tz=UTC)
        return dt.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    text = str(value)
    return text.replace("T", " ")[: 19 if seconds else 16]


def _iso(value: Any) -> str:
    return format_time(value) or "" if isinstance(value, int) else str(value or "")


def _ago(ms: int | None) -> str:
    if ms is None:
        return ""
    return charts.fmt_duration(max(0, int(time.time() * 1000) - ms)) + " ago"


def status_class(status: Any) -> str:
    s = str(status or "").upper()
    if s in ("SUCCEEDED", "SUCCESS", "CONTINUE"):
        return "ok"
    if s in ("TERMINAL", "FAILED", "FAILURE", "FAILED_CONTINUE", "STOPPED", "STOP", "ABORTED"):
        return "bad"
    if s in ("RUNNING", "BUILDING", "NOT_STARTED", "PAUSED", "SUSPENDED", "BUFFERED"):
        return "run"
    if s in ("CANCELED", "SKIPPED"):
        return "muted"
    if s in ("UNSTABLE",):
        return "warn"
    return "plain"


def url_with(path: str, params: Mapping[str, Sequence[str]], **changes: Any) -> str:
    """``path`` with the query ``params`` after ``changes`` (a value of ``None`` or "" removes the key;
    a list sets several values). Drops the cursor unless it is set explicitly."""
    merged: dict[str, list[str]] = {k: list(v) for k, v in params.items() if k != "cursor"}
    for key, value in changes.items():
        if value is None or value == "" or value == []:
            merged.pop(key, None)
        elif isinstance(value, list | tuple):
            merged[key] = [str(v) for v in value]
        else:
            merged[key] = [str(value)]
    pairs = [(k, v) for k, vs in merged.items() for v in vs if v != ""]
    return path + ("?" + urlencode(pairs) if pairs else "")


def _cell_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return cell(value)


def _zip_rows(days: Sequence[str], series: Mapping[str, Sequence[int]]) -> list[list[Any]]:
    """Rows ``[day, value per series..., total]`` for a chart's numbers table."""
    rows = []
    for i, day in enumerate(days):
        values = [series[s][i] for s in series]
        rows.append([day, *values, sum(values)])
    return rows


def _volume_rows(volume: Sequence[tuple[str, Mapping[str, int]]], kinds: Sequence[str]) -> list[list[Any]]:
    return [[a, *(c.get(k, 0) for k in kinds), sum(c.values())] for a, c in volume]


def _build_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("spintrail", "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        t=_fmt_time,
        iso=_iso,
        ago=_ago,
        dur=charts.fmt_duration,
        status=status_class,
        cell=_cell_text,
        num=charts.fmt_int,
        pct=lambda v: charts.NONE if v is None else f"{v * 100:.1f} %",
        zip_rows=_zip_rows,
        volume_rows=_volume_rows,
        zip=lambda a, b: list(zip(a, b, strict=False)),
        app_link=lambda name: url_with("/search", {}, application=name, since="7d"),
    )
    env.globals.update(
        url_with=url_with,
        PRESETS=PRESETS,
        FILTER_HELP=FILTER_HELP,
        REPORTS=report.REPORTS,
        charts=charts,
        FINDINGS=report.FINDINGS,
    )
    return env


_ENV = _build_env()


def render(request: Request, template_name: str, status: int = 200, **context: Any) -> HTMLResponse:
    template = _ENV.get_template(template_name)
    html = template.render(request=request, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status)


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [v for v in params.get(name, ()) if v.strip()]
    return values[-1].strip() if values else None


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _error(request: Request, status: int, message: str, **context: Any) -> HTMLResponse:
    page = render(request, "error.html", status=status, message=message, code=status, **context)
    if status == 503:
        page.headers["Retry-After"] = "5"
    return page


def api_error(status: int, reason: str, message: str) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": reason, "message": message}, status_code=status, headers=headers)


# --------------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------------


def facets(store: Store, filters: Filters, *, limit: int = 8) -> dict[str, list[tuple[str, int]]]:
    """Counts for the search page's facets; each ignores its own filter so alternatives stay visible."""
    out: dict[str, list[tuple[str, int]]] = {}
    for name, field_name in FACETS.items():
        others = replace(filters, **{name: ()})
        out[name] = [(v, n) for (v,), n in store.count_by(others, [field_name], limit=limit + 1) if v][:limit]
    return out


@pages.get("/")
async def home() -> Response:
    return RedirectResponse("/search?since=24h", status_code=302)


@pages.get("/search")
async def search_page(request: Request) -> Response:
    params = _params(request)
    store = _store(request)
    try:
        filters = Filters.from_params(params)
        limit = parse_limit(_one(params, "limit"), default=50, maximum=500)
    except FilterError as exc:
        return render(
            request,
            "search.html",
            status=400,
            params=params,
            error=str(exc),
            records=[],
            next_url=None,
            facets={},
            filters=Filters(),
            form_filters=FORM_FILTERS,
            first_page=True,
        )
    cursor = _one(params, "cursor")
    try:
        page = await run_in_threadpool(store.search, filters, limit=limit, cursor=cursor)
        counts = await run_in_threadpool(facets, store, filters)
    except ValueError as exc:
        return _error(request, 400, str(exc))
    except StoreUnavailable as exc:
        return _error(request, 503, f"the store is not reachable: {exc}")
    next_url = url_with("/search", params, cursor=page.next_cursor) if page.next_cursor else None
    return render(
        request,
        "search.html",
        params=params,
        error=None,
        records=page.records,
        next_url=next_url,
        facets=counts,
        filters=filters,
        form_filters=FORM_FILTERS,
        first_page=cursor is None,
    )


# --------------------------------------------------------------------------------------------------
# one event, one execution
# --------------------------------------------------------------------------------------------------


async def _find(store: Store, ref: str) -> AuditRecord | None:
    number = row_id(ref)
    if number is not None:
        found = await run_in_threadpool(store.get, number)
        if found is not None:
            return found
    return await run_in_threadpool(store.get_by_event_id, ref)


@pages.get("/events/{ref}")
async def event_page(request: Request, ref: str) -> Response:
    store = _store(request)
    record = await _find(store, ref)
    if record is None or record.id is None:
        return _error(request, 404, f"No event with id or event_id {ref!r}.")
    principal = auth.principal_of(request)
    raw: bytes | None = None
    if principal is None or principal.can("auditor"):
        # The raw event is shown to auditors and admins only, and their read is logged (as in the API).
        await auth.record_access(request, "event", target=record.event_id)
        raw = await run_in_threadpool(store.raw, record.id)
    pretty: str | None = None
    if raw is not None and len(raw) <= RAW_DISPLAY_MAX:
        try:
            pretty = _escape_unencodable(json.dumps(json.loads(raw), indent=2, ensure_ascii=False))
        except RecursionError:  # deeper than Python nests: shown as received
            pretty = raw.decode("utf-8", "replace")
        except ValueError:
            pretty = raw.decode("utf-8", "replace")
    return render(
        request,
        "event.html",
        r=record,
        raw_size=len(raw) if raw is not None else None,
        pretty=pretty,
        api=record.to_api(),
    )


_UNENCODABLE = re.compile("[\ud800-\udfff]")


def _escape_unencodable(text: str) -> str:
    """Lone surrogates (which UTF-8 cannot encode) written back as the JSON escapes they arrived as."""
    return _UNENCODABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _late_ids(records: list[AuditRecord]) -> set[int]:
    """Events received after an event that happened later than them (arrived out of order)."""
    late: set[int] = set()
    lowest_after: int | None = None
    for r in reversed(records):  # records in event-time order; walk from the latest
        if r.id is None:
            continue
        if lowest_after is not None and r.id > lowest_after:
            late.add(r.id)
        lowest_after = r.id if lowest_after is None else min(lowest_after, r.id)
    return late


@pages.get("/executions/{execution_id}")
async def execution_page(request: Request, execution_id: str) -> Response:
    store = _store(request)
    records = await run_in_threadpool(store.execution, execution_id)
    if not records:
        return _error(request, 404, f"No events for execution {execution_id!r}.")
    tl = build_timeline(execution_id, records)
    spans = stage_spans(tl.records)
    start = tl.start if tl.start is not None else tl.records[0].time
    finish = tl.end if tl.end is not None else max(r.time for r in tl.records)
    for s in spans:
        finish = max(finish, s.end or s.start or finish)
    arrival = {r.id: i + 1 for i, r in enumerate(sorted(tl.records, key=lambda r: r.id or 0))}
    return render(
        request,
        "execution.html",
        tl=tl,
        spans=spans,
        t0=start,
        t1=max(finish, start + 1),
        late=_late_ids(tl.records),
        arrival=arrival,
        judgments=report.judgments(tl.records),
        trigger_type=next((r.trigger_type for r in tl.records if r.trigger_type), None),
        last=tl.records[-1],
    )


# --------------------------------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------------------------------


def _range(params: Mapping[str, Sequence[str]], default_since: str) -> tuple[int | None, int | None, str]:
    since_text = _one(params, "since")
    if since_text is None and "since" not in params:
        since_text = default_since or None
    until_text = _one(params, "until")
    now = int(time.time() * 1000)
    since = parse_time(since_text, name="since", now_ms=now) if since_text else None
    until = parse_time(until_text, name="until", now_ms=now) if until_text else None
    if since is not None and until is not None and since >= until:
        raise FilterError("since must be earlier than until")
    return since, until, since_text or ""


def _dashboard_args(params: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    since, until, since_text = _range(params, "7d")
    if since is None:
        since = parse_time("90d", name="since")
        since_text = "90d"
    return {
        "since": since,
        "until": until,
        "application": tuple(v for v in params.get("application", ()) if v.strip()),
        "since_text": since_text,
    }


@pages.get("/dashboard")
async def dashboard_page(request: Request) -> Response:
    params = _params(request)
    try:
        args = _dashboard_args(params)
    except FilterError as exc:
        return _error(request, 400, str(exc))
    since_text = args.pop("since_text")
    dash = await run_in_threadpool(lambda: report.dashboard(_store(request), **args))
    return render(request, "dashboard.html", d=dash, params=params, since_text=since_text)


@api.get("/api/v1/dashboard", tags=["reports"], summary="Dashboard numbers")
async def dashboard_api(request: Request) -> Response:
    """Deployments per day by outcome, top applications, accounts and users, failure rate, manual-judgment
    decisions, change volume per account and deployment duration (``since`` default 7d, ``application``)."""
    try:
        args = _dashboard_args(_params(request))
    except FilterError as exc:
        return api_error(400, "bad_filter", str(exc))
    args.pop("since_text")
    dash = await run_in_threadpool(lambda: report.dashboard(_store(request), **args))
    return JSONResponse(dash.to_api())


# --------------------------------------------------------------------------------------------------
# live view
# --------------------------------------------------------------------------------------------------


def _live_filters(params: Mapping[str, Sequence[str]]) -> Filters:
    return replace(Filters.from_params(params), since=None, until=None)


@pages.get("/live")
async def live_page(request: Request) -> Response:
    params = _params(request)
    try:
        filters = _live_filters(params)
    except FilterError as exc:
        return _error(request, 400, str(exc))
    store = _store(request)
    last_id = await run_in_threadpool(store.last_id)
    recent = await run_in_threadpool(store.tail, max(0, last_id - 2000), filters, limit=2000)
    recent = sorted(recent, key=lambda r: r.id or 0, reverse=True)[:50]
    return render(request, "live.html", records=recent, last_id=last_id, params=params, filters=filters)


@pages.get("/live/stream")
async def live_stream(request: Request) -> Response:
    """Server-sent events: ``rows`` events carrying rendered table rows of newly received events."""
    params = _params(request)
    try:
        filters = _live_filters(params)
    except FilterError as exc:
        return _bad_request(str(exc))
    store = _store(request)
    start_text = request.headers.get("last-event-id") or _one(params, "after_id")
    start = row_id(start_text) if start_text is not None else None
    if start_text is not None and start is None:
        return _bad_request(f"after_id must be a store id (a whole number), not {start_text!r}")
    after = start if start is not None else await run_in_threadpool(store.last_id)
    row = _ENV.get_template("_row.html")

    async def events() -> AsyncIterator[str]:
        nonlocal after
        yield f"retry: 1500\nid: {after}\n\n"
        deadline = time.monotonic() + LIVE_STREAM_SECONDS
        quiet = 0.0
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            records = await run_in_threadpool(store.tail, after, filters, limit=200)
            if records:
                after = records[-1].id or after
                html = "".join(row.render(r=r, fresh=True) for r in reversed(records))
                html = " ".join(html.splitlines())
                yield f"id: {after}\nevent: rows\ndata: {html}\n\n"
                quiet = 0.0
            else:
                quiet += LIVE_POLL_SECONDS
                if quiet >= 10:
                    yield ": still here\n\n"
                    quiet = 0.0
            await asyncio.sleep(LIVE_POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _bad_request(message: str) -> Response:
    return Response(message + "\n", status_code=400, media_type="text/plain")


# --------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------


def _report_args(name: str, params: Mapping[str, Sequence[str]], default_accounts: str) -> dict[str, Any]:
    if name not in report.REPORTS:
        raise report.ReportError(f"no report named {name!r}: use one of {', '.join(report.REPORTS)}")
    since, until, since_text = _range(params, report.REPORT_DEFAULT_SINCE[name])
    accounts = report.account_patterns(params.get("accounts") or default_accounts)
    return {
        "accounts": accounts,
        "since": since,
        "until": until,
        "application": tuple(v.strip() for v in params.get("application", ()) if v.strip()),
        "server_group": _one(params, "server_group"),
        "cluster": _one(params, "cluster"),
        "pipeline": _one(params, "pipeline"),
        "since_text": since_text,
    }


def report_csv(rep: report.Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(rep.columns)
    for row in rep.rows:
        writer.writerow([cell(row.get(c)) for c in rep.columns])
    return buf.getvalue()


def _report_filename(name: str, ext: str) -> str:
    return f"spintrail-{name}_{datetime.now(tz=UTC).strftime('%Y%m%dT%H%M%SZ')}.{ext}"


@pages.get("/reports")
async def reports_index(request: Request) -> Response:
    settings = request.app.state.settings
    return render(request, "reports.html", accounts=settings.production_accounts)


@pages.get("/reports/{name}")
async def report_page(request: Request, name: str) -> Response:
    params = _params(request)
    settings = request.app.state.settings
    try:
        args = _report_args(name, params, settings.production_accounts)
    except (FilterError, report.ReportError) as exc:
        return _error(request, 404 if name not in report.REPORTS else 400, str(exc))
    since_text = args.pop("since_text")
    needs_target = name == "lineage" and not (args["server_group"] or args["cluster"])
    rep: report.Report | None = None
    error: str | None = None
    if not needs_target:
        try:
            rep = await run_in_threadpool(lambda: report.run_report(_store(request), name, **args))
        except report.ReportError as exc:
            error = str(exc)
    return render(
        request,
        "report.html",
        status=400 if error else 200,
        name=name,
        title=report.REPORTS[name],
        rep=rep,
        error=error,
        params=params,
        args=args,
        since_text=since_text,
        table_columns=report.REPORT_TABLE_COLUMNS[name],
        default_accounts=settings.production_accounts,
    )


@api.get("/api/v1/reports/{name}", tags=["reports"], summary="Run a report")
async def report_api(request: Request, name: str) -> Response:
    """Reports: ``production-changes`` and ``separation-of-duties`` (``accounts`` glob patterns, default
    the ``production_accounts`` setting; ``since`` default 30d), ``lineage`` (``server_group`` or
    ``cluster``), ``pipeline-history`` (``application``, ``pipeline``), ``unfinished`` (``since`` default
    30d). All take ``since``, ``until``, ``application`` and ``format=json|csv``."""
    params = _params(request)
    fmt = (_one(params, "format") or "json").lower()
    if fmt not in ("json", "csv"):
        return api_error(400, "bad_format", f"format must be json or csv, not {fmt!r}")
    settings = request.app.state.settings
    try:
        args = _report_args(name, params, settings.production_accounts)
    except FilterError as exc:
        return api_error(400, "bad_filter", str(exc))
    except report.ReportError as exc:
        return api_error(404, "not_found", str(exc))
    args.pop("since_text")
    try:
        rep = await run_in_threadpool(lambda: report.run_report(_store(request), name, **args))
    except report.ReportError as exc:
        return api_error(400, "bad_parameters", str(exc))
    except StoreUnavailable as exc:
        return api_error(503, "store_unavailable", str(exc))
    if fmt == "csv":
        return Response(
            report_csv(rep),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{_report_filename(name, "csv")}"'},
        )
    return JSONResponse(rep.to_api())


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------


def _export_params() -> list[dict[str, Any]]:
    from spintrail.query import FILTER_NAMES

    out: list[dict[str, Any]] = [
        {
            "name": "format",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": ["csv", "ndjson"]},
            "description": "csv (default) or ndjson",
        }
    ]
    out += [
        {
            "name": n,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": FILTER_HELP[n],
        }
        for n in FILTER_NAMES
    ]
    return out


@api.get(
    "/api/v1/export",
    tags=["query"],
    summary="Export the records matching the filters",
    openapi_extra={"parameters": _export_params()},
)
async def export_api(request: Request) -> Response:
    """Every record matching the filters of ``GET /api/v1/events``, newest first, as CSV or NDJSON,
    streamed; the columns are the record's field names (see docs/exports.md)."""
    params = _params(request)
    try:
        fmt = export.check_format(_one(params, "format"))
        filters = Filters.from_params(params)
    except (FilterError, export.ExportError) as exc:
        return api_error(400, "bad_filter" if isinstance(exc, FilterError) else "bad_format", str(exc))
    store = _store(request)
    try:
        await run_in_threadpool(store.ping)
    except StoreUnavailable as exc:
        return api_error(503, "store_unavailable", str(exc))
    name = export.filename(filters, fmt)
    return StreamingResponse(
        export.iter_export(store, filters, fmt),
        media_type=export.MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Spintrail-Columns": ",".join(API_FIELDS),
        },
    )


def mount(app: Any) -> None:
    """Add the pages, their static files and the report/export API to an application."""
    from starlette.staticfiles import StaticFiles

    app.include_router(api)
    app.include_router(pages)
    app.mount("/static", StaticFiles(packages=[("spintrail", "static")]), name="static")
