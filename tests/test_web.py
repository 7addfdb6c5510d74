"""The web app over real HTTP: pages, report API, live stream, CLI reports, and a real browser (chromium)."""

from __future__ import annotations

import csv
import io
import json
import os
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
from spintrail import report
from spintrail.record import API_FIELDS
from spintrail.simulate import Simulator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _api_ids(server: Server, params: dict[str, str]) -> list[int]:
    ids: list[int] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        body = server.get("/api/v1/events", params=query).json()
        ids += [e["id"] for e in body["events"]]
        cursor = body["next_cursor"]
        if not cursor:
            return ids


def _planted(simulated: SimulatedData) -> str:
    facts = simulated.facts
    return str(facts.server_groups[facts.lifecycle_server_group]["created_execution"])


# -- pages and APIs over HTTP ------------------------------------------------------------------------


def test_pages_render(simulated_server: Server, simulated: SimulatedData) -> None:
    s = simulated_server
    app = Counter(e["application"] for e in simulated.facts.executions.values()).most_common(1)[0][0]
    home = s.get("/", follow_redirects=False)
    assert home.status_code == 302 and home.headers["location"] == "/search?since=24h"
    for path, marker in [
        (f"/search?since=30d&application={app}", 'id="results"'),
        ("/search?q=prod&since=30d", 'id="results"'),
        ("/events/1", "Raw event as received"),
        (f"/executions/{_planted(simulated)}", 'id="timeline"'),
        ("/dashboard?since=30d", 'id="chart-deployments"'),
        ("/live", 'id="live-root"'),
        ("/reports", "Separation of duties"),
        ("/reports/production-changes", 'id="report-rows"'),
        ("/reports/separation-of-duties?since=30d", 'id="count-self_approved"'),
        (f"/reports/lineage?server_group={simulated.facts.lifecycle_server_group}", 'id="versions"'),
        ("/reports/pipeline-history", 'id="report-rows"'),
        ("/reports/unfinished", 'id="report-rows"'),
        ("/reports/unfinished", "spintrail backfill --gate https://GATE --repair-unfinished"),
        ("/reports/lineage", "Name a cluster or a server group"),
        ("/static/style.css", "--accent"),
        ("/static/app.js", "EventSource"),
    ]:
        r = s.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert marker in r.text, path


def test_bad_input_gets_a_clear_error(simulated_server: Server) -> None:
    s = simulated_server
    cases = [
        ("/search?since=yesterday", 400, "since must be an RFC 3339 time"),
        ("/search?cursor=garbage", 400, "cursor is not valid"),
        ("/search?since=2d&until=3d", 400, "since must be earlier than until"),
        ("/events/999999999", 404, "No event with id or event_id"),
        ("/executions/no-such-run", 404, "No events for execution"),
        ("/reports/no-such-report", 404, "no report named"),
        ("/reports/production-changes?since=whenever", 400, "since must be"),
        ("/dashboard?until=later", 400, "until must be"),
        ("/live/stream?after_id=abc", 400, "after_id must be a store id"),
    ]
    for path, status, message in cases:
        r = s.get(path)
        assert r.status_code == status, path
        assert message in r.text, (path, r.text[:500])
    for path, status, reason in [
        ("/api/v1/reports/nope", 404, "not_found"),
        ("/api/v1/reports/lineage", 400, "bad_parameters"),
        ("/api/v1/reports/unfinished?format=xml", 400, "bad_format"),
        ("/api/v1/reports/unfinished?until=soon", 400, "bad_filter"),
        ("/api/v1/dashboard?since=never", 400, "bad_filter"),
    ]:
        r = s.get(path)
        assert r.status_code == status and r.json()["error"] == reason, (path, r.text)
        assert r.json()["message"]


def test_report_api_answers_json_and_csv(simulated_server: Server, simulated: SimulatedData) -> None:
    facts = simulated.facts
    body = simulated_server.get("/api/v1/reports/separation-of-duties", params={"since": "30d"}).json()
    assert body["report"] == "separation-of-duties" and body["columns"] == list(report.SOD_COLUMNS)
    found = {r["execution_id"] for r in body["rows"] if r["finding"] == "self_approved"}
    assert found == set(facts.self_approved_prod)
    assert body["counts"]["self_approved"] == len(found)
    only_aws = simulated_server.get(
        "/api/v1/reports/production-changes", params=[("accounts", "aws-*,!*-staging,!*-test")]
    ).json()
    assert only_aws["params"]["accounts"] == ["aws-*", "!*-staging", "!*-test"]
    assert only_aws["rows"] and all(r["accounts"] == ["aws-prod"] for r in only_aws["rows"])
    resp = simulated_server.get(
        "/api/v1/reports/lineage", params={"server_group": facts.lifecycle_server_group, "format": "csv"}
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"].startswith('attachment; filename="spintrail-lineage_')
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [r["action"] for r in rows] == [
        h["action"] for h in facts.server_groups[facts.lifecycle_server_group]["history"]
    ]
    assert list(rows[0]) == list(report.LINEAGE_COLUMNS)
    dash = simulated_server.get("/api/v1/dashboard", params={"since": "30d"}).json()
    assert dash["deployments"] > 0 and sum(dash["deployment_status"].values()) == dash["deployments"]
    spec = simulated_server.get("/openapi.json").json()
    assert "/api/v1/reports/{name}" in spec["paths"] and "/api/v1/export" in spec["paths"]
    assert "/search" not in spec["paths"], "pages are not part of the API description"


def test_cli_reports(simulated: SimulatedData) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spintrail", "report", *args, "--database", simulated.database],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = run("separation-of-duties", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["execution_id"] for r in rows if r["finding"] == "self_approved"} == set(
        simulated.facts.self_approved_prod
    )
    out = run("unfinished", "--format", "csv")
    assert out.returncode == 0
    parsed = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {r["execution_id"] for r in parsed} == set(simulated.facts.unfinished)
    out = run("pipeline-history", "--format", "table")
    assert out.returncode == 0 and "Pipeline configuration history" in out.stdout
    out = run("lineage")
    assert out.returncode == 2 and "give a server group" in out.stderr
    out = run("production-changes", "--since", "last week")
    assert out.returncode == 2 and "since must be" in out.stderr


def _one_event(app: str) -> dict[str, Any]:
    event = next(iter(Simulator(seed=5, days=1, executions=1).events()))
    event = json.loads(json.dumps(event))
    event["eventId"] = f"live-{app}-{time.time_ns()}"
    event["details"]["application"] = app
    return event


def test_live_stream_sends_new_events(server: Server) -> None:
    first = server.post(_one_event("before"))
    assert first.status_code == 200
    with httpx.stream("GET", server.url + "/live/stream", timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        assert next(lines) == "retry: 1500"
        start_id = next(lines)
        assert start_id == f"id: {first.json()['events'][0]['id']}", "starts after what is already stored"
        posted = server.post(_one_event("liveapp"))
        assert posted.status_code == 200
        for line in lines:
            if line.startswith("data: "):
                assert "liveapp" in line and "before" not in line and "<tr" in line
                break
    # reconnecting with Last-Event-ID resumes from there (EventSource does this by itself)
    with httpx.stream("GET", server.url + "/live/stream", headers={"Last-Event-ID": "0"}, timeout=30) as resp:
        data = next(line for line in resp.iter_lines() if line.startswith("data: "))
        assert "before" in data and "liveapp" in data


# -- in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"chromium is missing at {CHROMIUM}: CI must install it (scripts/test does)")
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install chromium): browser tests skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(15_000)
    yield pg
    pg.screenshot(path=str(tmp_path / "last.png"))  # left in the test's tmp dir to look at when it fails
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def _column(page: Any, css: str) -> list[str]:
    return [t.strip() for t in page.locator(f"#results tbody td.{css}").all_inner_texts()]


def test_browser_search_filters_and_facets(
    page: Any, simulated_server: Server, simulated: SimulatedData
) -> None:
    base = simulated_server.url
    page.goto(base + "/")
    assert page.url.endswith("/search?since=24h")
    page.get_by_role("link", name="30 days").click()
    page.wait_for_url("**since=30d**")
    assert page.locator("#results tbody tr").count() == 50
    # a facet narrows the search and shows in the URL
    facet = page.locator('[data-facet="application"] li a').first
    app = facet.locator(".v").inner_text()
    facet.click()
    page.wait_for_url(f"**application={app}**")
    assert set(_column(page, "c-app")) == {app}
    # the form: a user filter, kept with the facet
    user = simulated.facts.executions[_planted(simulated)]["user"]
    page.fill('input[name="user"]', user)
    page.press('input[name="user"]', "Enter")
    page.wait_for_url("**user=**")
    assert "application=" in page.url and "since=30d" in page.url
    users = set(_column(page, "c-user"))
    assert users <= {user}
    # remove the application filter with its chip
    page.locator("a.chip.filter", has_text=f"application: {app}").click()
    page.wait_for_url(lambda url: "application=" not in url)
    assert set(_column(page, "c-user")) == {user}
    # full text: a server group name finds the events that touched it
    sg = simulated.facts.lifecycle_server_group
    page.goto(base + "/search?since=30d")
    page.fill('input[name="q"]', sg)
    page.press('input[name="q"]', "Enter")
    page.wait_for_url(f"**q={sg}**")
    ids = [
        int(h.split("/")[-1])
        for h in page.locator("#results td.c-time a").evaluate_all("a => a.map(x => x.getAttribute('href'))")
    ]
    assert ids == _api_ids(simulated_server, {"q": sg, "since": "30d"})[:50]
    # keyset paging: older pages continue where the last one stopped
    page.goto(base + "/search?since=30d&limit=20")
    first = page.locator("#results td.c-time a").evaluate_all("a => a.map(x => x.getAttribute('href'))")
    page.locator("#older").click()
    page.wait_for_url("**cursor=**")
    second = page.locator("#results td.c-time a").evaluate_all("a => a.map(x => x.getAttribute('href'))")
    every = [f"/events/{i}" for i in _api_ids(simulated_server, {"since": "30d"})]
    assert first + second == every[:40]


def test_browser_event_detail_and_raw_download(
    page: Any, simulated_server: Server, simulated: SimulatedData, tmp_path: Path
) -> None:
    page.goto(simulated_server.url + f"/search?execution_id={_planted(simulated)}&type=orca:stage:complete")
    page.locator("#results td.c-time a").first.click()
    page.wait_for_url("**/events/*")
    ref = page.url.rsplit("/", 1)[-1]
    record = simulated_server.get(f"/api/v1/events/{ref}").json()["event"]
    assert page.locator("h1").inner_text() == record["description"]
    pre = page.locator("#raw pre")
    assert not pre.is_visible(), "the raw event starts collapsed"
    page.locator("#raw summary").click()
    assert pre.is_visible() and '"details"' in pre.inner_text()
    with page.expect_download() as info:
        page.locator("#download-raw").click()
    saved = tmp_path / "raw.json"
    info.value.save_as(saved)
    assert saved.read_bytes() == simulated_server.get(f"/api/v1/events/{ref}/raw").content
    assert info.value.suggested_filename == f"event-{record['event_id']}.json"
    # links to the same user and application keep the same vocabulary as the API
    assert page.locator(f'a[href="/search?user={record["user"].replace("@", "%40")}&since=7d"]').count() == 1


def test_browser_execution_timeline(page: Any, simulated_server: Server, simulated: SimulatedData) -> None:
    facts = simulated.facts
    eid = _planted(simulated)
    page.goto(simulated_server.url + f"/search?execution_id={eid}&type=orca:pipeline:starting")
    page.locator("#results td.c-time a").first.click()
    page.locator("#open-timeline").click()
    page.wait_for_url(f"**/executions/{eid}")
    stages = page.locator("#timeline details.g-stage")
    assert stages.count() >= 5
    judged = page.locator("#timeline .judge").first.inner_text()
    assert facts.executions[eid]["user"] in judged
    timeline = simulated_server.get(f"/api/v1/executions/{eid}").json()
    assert page.locator("#events tbody tr").count() == len(timeline["events"])
    assert page.get_by_text("self-approved").count() >= 1
    # a run whose final event was dropped says so
    dropped = facts.dropped_final[0]
    page.goto(simulated_server.url + f"/executions/{dropped}")
    assert "No end event received" in page.locator("#no-end").inner_text()


def test_browser_dashboard_renders_its_charts(page: Any, simulated_server: Server) -> None:
    page.goto(simulated_server.url + "/dashboard")
    page.get_by_role("link", name="30 days").click()
    page.wait_for_url("**since=30d**")
    numbers = simulated_server.get("/api/v1/dashboard", params={"since": "30d"}).json()
    assert page.locator("#kpi-deployments").inner_text() == f"{numbers['deployments']:,}"
    assert page.locator("svg.chart").count() == 8
    bars = page.locator("#chart-deployments svg rect title")
    assert bars.count() > numbers["days"].__len__()
    titles = bars.all_text_contents()
    succeeded = sum(numbers["deployments_by_day"]["succeeded"])
    assert sum(int(t.rsplit(" ", 1)[1]) for t in titles if ": succeeded " in t) == succeeded
    for section in ("chart-apps", "chart-accounts", "chart-users", "chart-approvers", "chart-changes"):
        assert page.locator(f"#{section} svg rect").count() > 0, section
        assert page.locator(f"#{section} svg text").count() > 0, section
    box = page.locator("#chart-deployments svg").bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 150
    page.locator("#chart-apps details.numbers summary").click()
    assert page.locator("#chart-apps details.numbers table tbody tr").count() == len(
        numbers["top_applications"]
    )


def test_browser_export_downloads_the_filtered_rows(
    page: Any, simulated_server: Server, tmp_path: Path
) -> None:
    page.goto(simulated_server.url + "/search?since=30d&account=aws-prod&type=orca:stage:*")
    with page.expect_download() as info:
        page.locator("#export-csv").click()
    download = info.value
    assert download.suggested_filename.startswith("spintrail-events_account-aws-prod_type-orca-stage_since-")
    assert download.suggested_filename.endswith(".csv")
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert tuple(rows[0]) == API_FIELDS
    expected = _api_ids(simulated_server, {"since": "30d", "account": "aws-prod", "type": "orca:stage:*"})
    assert [int(r[0]) for r in rows[1:]] == expected and len(expected) > 50


def test_browser_reports(page: Any, simulated_server: Server, simulated: SimulatedData) -> None:
    facts = simulated.facts
    page.goto(simulated_server.url + "/reports")
    page.get_by_role("link", name="Separation of duties").click()
    page.wait_for_url("**/reports/separation-of-duties**")
    assert page.locator("#count-self_approved b").inner_text() == str(len(facts.self_approved_prod))
    flagged = page.locator("#report-rows tr.flag").count()
    assert flagged >= len(facts.self_approved_prod)
    page.goto(simulated_server.url + "/reports")
    cluster = facts.server_groups[facts.lifecycle_server_group]["cluster"]
    page.fill('input[name="cluster"]', cluster)
    page.get_by_role("button", name="Show lineage").click()
    page.wait_for_url(f"**cluster={cluster}**")
    assert page.locator("#versions tbody tr", has_text=facts.lifecycle_server_group).count() == 1


def test_browser_live_view_updates_without_reload(page: Any, server: Server) -> None:
    server.post(_one_event("already-there"))
    page.goto(server.url + "/live")
    page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
    page.evaluate("window.__same_page = true")
    assert page.locator("#live tbody tr").count() == 1
    server.post(_one_event("arrived-later"))
    page.locator("#live tbody tr", has_text="arrived-later").wait_for()
    assert page.evaluate("window.__same_page") is True
    assert page.locator("#live tbody tr").first.inner_text().count("arrived-later") == 1
    page.locator("#live-pause").click()
    server.post(_one_event("while-paused"))
    time.sleep(2.5)
    assert page.locator("#live tbody tr", has_text="while-paused").count() == 0
    page.locator("#live-pause").click()
    page.locator("#live tbody tr", has_text="while-paused").wait_for()
    page.goto("about:blank")  # close the stream before the server stops
